"""quantize.py: float rows -> GGUF tensor bytes, with the C kernels.

What it is: the converter's encoding step. A tensor is cut into chunks of
rows; each chunk is read (float32), encoded (lib.pq_quantize for Q4_0/Q4_1/
Q8_0, numpy casts for F16/F32) and decoded again to measure the error, on a
ThreadPoolExecutor (cffi calls and numpy casts release the GIL). Chunks are
handed back in order with a bounded number in flight, so memory stays near a
few chunks plus the source view.
What it is not: the kernels themselves (csrc/quants.c). FALLBACK exists for
tests only, for a build whose pq_quantize still returns an error.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import ConvertError
from .gguf_writer import BLOCK, GGML_F16, GGML_F32, TYPE_NAME

CHUNK_ELEMS = 1 << 18          # 1 MB of float32 per work item: read, encode, decode
                               # and compare while it sits in L2 (1.7x faster than 4 MB)

# Test hook: callable(type, f32 rows) -> bytes, or (type, raw, rows, cols) for
# dequantize; used only when the C kernel reports an error. None in shipped use.
FALLBACK = None
FALLBACK_DEQUANT = None


def _lib():
    from pyllama_q._pq import ffi, lib

    return ffi, lib


def quantize_rows(ggml_type, x, where):
    """x: float32 (rows, cols) C-contiguous -> uint8 encoded bytes."""
    ffi, lib = _lib()
    rows, cols = x.shape
    blk, size = BLOCK[ggml_type]
    out = np.empty(rows * (cols // blk) * size, dtype=np.uint8)
    st = lib.pq_quantize(ggml_type, ffi.cast("const float *", ffi.from_buffer(x)),
                         ffi.from_buffer(out), rows, cols)
    if st != 0:
        if FALLBACK is not None:
            return np.frombuffer(FALLBACK(ggml_type, x), dtype=np.uint8)
        msg = ffi.string(lib.pq_status_str(st)).decode()
        raise ConvertError(f"{where}: quantizing to {TYPE_NAME[ggml_type]} failed: {msg}")
    return out


def dequantize_rows(ggml_type, raw, rows, cols, where):
    """Encoded bytes of `rows` rows -> float32 (rows, cols)."""
    ffi, lib = _lib()
    raw = np.ascontiguousarray(raw)
    out = np.empty((rows, cols), dtype=np.float32)
    st = lib.pq_dequantize(ggml_type, ffi.from_buffer(raw), ffi.cast("float *", ffi.from_buffer(out)),
                           rows, cols)
    if st != 0:
        if FALLBACK_DEQUANT is not None:
            return np.asarray(FALLBACK_DEQUANT(ggml_type, raw, rows, cols), np.float32).reshape(rows, cols)
        msg = ffi.string(lib.pq_status_str(st)).decode()
        raise ConvertError(f"{where}: dequantizing failed: {msg}")
    return out


def _encode_chunk(src, ggml_type, r0, r1):
    """-> (bytes, sum of squared error, sum of squares) for rows r0..r1."""
    x = src.read(r0, r1)
    x = np.ascontiguousarray(x.reshape(r1 - r0, -1) if len(src.shape) > 1 else x.reshape(1, -1),
                             dtype=np.float32)
    if ggml_type == GGML_F32:
        return x.tobytes(), 0.0, float(np.dot(x.ravel(), x.ravel()))
    if ggml_type == GGML_F16:
        q = x.astype(np.float16)
        y = q.astype(np.float32)
    else:
        q = quantize_rows(ggml_type, x, src.where)
        y = dequantize_rows(ggml_type, q, x.shape[0], x.shape[1], src.where)
    y -= x
    d = y.ravel()
    xf = x.ravel()
    return q.tobytes(), float(np.dot(d, d)), float(np.dot(xf, xf))


class Encoder:
    """A thread pool that turns Src tensors into GGUF bytes chunk by chunk."""

    def __init__(self, n_threads):
        self.n_threads = max(1, int(n_threads))
        self.pool = ThreadPoolExecutor(self.n_threads)

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)

    def encode(self, src, ggml_type, stats):
        """Yield the encoded bytes of `src` in order; fill stats['sse'/'ss']."""
        n_rows = src.n_rows
        n_cols = src.shape[-1] if src.shape else 1
        step = max(1, CHUNK_ELEMS // max(1, n_cols))
        bounds = [(r, min(n_rows, r + step)) for r in range(0, n_rows, step)]
        stats["sse"], stats["ss"] = 0.0, 0.0
        pending, it = [], iter(bounds)
        depth = 2 * self.n_threads
        for b in it:
            pending.append(self.pool.submit(_encode_chunk, src, ggml_type, *b))
            if len(pending) >= depth:
                break
        while pending:
            data, sse, ss = pending.pop(0).result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(self.pool.submit(_encode_chunk, src, ggml_type, *nxt))
            stats["sse"] += sse
            stats["ss"] += ss
            yield data
