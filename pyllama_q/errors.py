"""The exception family of pyllama-q, and the one place C status codes become
exceptions."""


class PQError(Exception):
    """Base class of every error pyllama-q raises on purpose."""


class FormatError(PQError, ValueError):
    """A model file is corrupt, truncated, or not in a format we read."""


class UnsupportedError(PQError):
    """A valid file or request that this build does not handle (a quant type,
    an architecture, a kernel variant)."""


class ContextFullError(PQError):
    """More tokens than the session's context holds."""


class CancelledError(PQError):
    """An evaluation stopped by Session.cancel()."""


class StateError(PQError, ValueError):
    """A saved session state that does not fit this model, or is corrupt."""


_BY_STATUS = {
    3: UnsupportedError,   # PQ_ERR_TYPE
    4: FormatError,        # PQ_ERR_SHAPE
    5: FormatError,        # PQ_ERR_MISSING
    6: ContextFullError,   # PQ_ERR_CTX_FULL
    7: CancelledError,     # PQ_ERR_CANCELLED
    9: UnsupportedError,   # PQ_ERR_UNSUPPORTED
    10: StateError,        # PQ_ERR_STATE
}


def check(status, what=""):
    """Raise the exception for a non-zero C status; `what` names the object
    (file, tensor, session) at fault."""
    if status == 0:
        return
    from ._pq import ffi, lib

    msg = ffi.string(lib.pq_status_str(status)).decode()
    if what:
        msg = f"{what}: {msg}"
    if status == 1:
        raise MemoryError(msg)
    raise _BY_STATUS.get(status, PQError)(msg)
