"""The converter's one exception: a one-line message naming the file,
tensor or key at fault. Part of pyllama-q's PQError family."""
from pyllama_q.errors import PQError


class ConvertError(PQError):
    """A checkpoint that cannot be converted (missing file, bad shape, unsafe
    pickle, unknown architecture, ...). The message is one line."""
