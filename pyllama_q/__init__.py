"""pyllama-q: run LLaMA-family GGUF models on the CPU.

Python outside (loading, sessions, sampling, tokenizers, templates, CLI),
SIMD C inside (one call per forward step, a persistent thread pool).
"""
from .errors import (PQError, FormatError, UnsupportedError, ContextFullError,
                     CancelledError, StateError)
from .sampling import Sampler, SamplerParams
from .api import Chunk, GenerationStats, Model, Session, load
from .chat_template import ChatTemplate

__version__ = "0.1.0"


def cpu_info():
    """Which CPU features were found and which kernel variant is in use."""
    from ._pq import ffi, lib

    return {
        "features": ffi.string(lib.pq_cpu_features()).decode().split(),
        "kernels": ffi.string(lib.pq_kernels_active()).decode(),
        "available": ffi.string(lib.pq_kernels_available()).decode().split(),
    }
