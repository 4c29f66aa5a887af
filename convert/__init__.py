"""pyllama_q.convert: checkpoints (Meta or Hugging Face layout, or a float
GGUF) to one quantized GGUF v3 file that pyllama-q and llama.cpp both open.

Entry point: main(argv=None), used by `pyllama-q convert` and
`python -m pyllama_q.convert`. No torch at run time: .pth archives are read
with an allowlist unpickler, safetensors through its JSON header.
"""
from .errors import ConvertError


def main(argv=None):
    from .cli import main as _main

    return _main(argv)


def convert(src, out, *args, **kw):
    """Library form of the CLI: see cli.convert."""
    from .cli import convert as _convert

    return _convert(src, out, *args, **kw)


__all__ = ["ConvertError", "main", "convert"]
