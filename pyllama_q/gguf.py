"""GGUF (v2/v3) reader: memory-maps a model file and validates it before
trusting a byte of it.

What it is: the file layout (header, metadata, tensor table, aligned data) and
the block sizes of every ggml type, so any GGUF can be opened and described.
What it is not: a judge of what a model needs (pyllama_q.model decides which
tensors and types it can run) nor a writer (see pyllama_q.convert).

Layout (little-endian): magic "GGUF", u32 version, u64 tensor count, u64
metadata count, the metadata key/values, the tensor infos (name, u32 n_dims,
u64 dims[n_dims] (ne0 first: the row length), u32 ggml type, u64 offset from
the data start), padding to `general.alignment` (default 32), then the data.
"""
import mmap
import os
import struct
from collections import namedtuple

import numpy as np

from .errors import FormatError
from ._closing import Closable

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4

# ggml_type id -> (name, elements per block, bytes per block)
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}
TYPE_IDS = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}

# GGUF metadata value types: id -> (struct format, size); STRING=8, ARRAY=9
_SCALARS = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4",
          7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}
GGUF_STRING, GGUF_ARRAY = 8, 9

TensorInfo = namedtuple("TensorInfo", "name type shape offset nbytes")
TensorInfo.__doc__ = """One tensor: ggml `type` id, `shape` in GGUF order (ne0 = row
length first), absolute file `offset` of its data, and `nbytes`."""


def type_name(tid):
    return GGML_TYPES[tid][0] if tid in GGML_TYPES else f"type {tid}"


def row_bytes(tid, ne0):
    """Bytes of one row of ne0 elements; FormatError if ne0 splits a block."""
    name, blck, size = GGML_TYPES[tid]
    if ne0 % blck:
        raise FormatError(f"{ne0} elements is not a whole number of {name} blocks of {blck}")
    return ne0 // blck * size


class _Cursor:
    """Bounds-checked little-endian reads over the mapped bytes."""

    def __init__(self, buf, path):
        self.buf, self.pos, self.size, self.path = buf, 0, len(buf), path

    def fail(self, what):
        raise FormatError(f"{self.path}: {what} (at byte {self.pos})")

    def need(self, n, what):
        if n < 0 or self.pos + n > self.size:
            self.fail(f"truncated file: {what} needs {n} bytes, {self.size - self.pos} left")

    def scalar(self, vtype, what):
        fmt, n = _SCALARS[vtype]
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def u32(self, what):
        return self.scalar(4, what)

    def u64(self, what):
        return self.scalar(10, what)

    def string(self, what):
        n = self.u64(what + " length")
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        # Tokens may hold bytes that are not UTF-8; keep them recoverable.
        return raw.decode("utf-8", errors="surrogateescape")

    def value(self, vtype, what, depth=0):
        if vtype in _SCALARS:
            return self.scalar(vtype, what)
        if vtype == GGUF_STRING:
            return self.string(what)
        if vtype != GGUF_ARRAY:
            self.fail(f"{what}: unknown metadata value type {vtype}")
        etype = self.u32(what + " element type")
        count = self.u64(what + " element count")
        if etype in _SCALARS:
            n = count * _SCALARS[etype][1]
            self.need(n, what)
            arr = np.frombuffer(self.buf, dtype=_NUMPY[etype], count=count, offset=self.pos)
            self.pos += n
            return arr.astype(bool) if etype == 7 else arr.copy()
        if etype == GGUF_STRING:
            self.need(count * 8, what)  # every string has at least its length
            return [self.string(what) for _ in range(count)]
        if etype == GGUF_ARRAY and depth < 2:
            self.need(count * 12, what)
            return [self.value(GGUF_ARRAY, what, depth + 1) for _ in range(count)]
        self.fail(f"{what}: unsupported array element type {etype}")


def _advise_huge(m):
    """Ask for 2 MiB pages on the weights map, before its first page is read.

    Where the kernel supports it (Linux with large page-cache folios, e.g.
    6.18 on ext4), pages the map reads from disk then come in 2 MiB folios
    and map with one TLB entry each. A decode step streams every weight once,
    and in 4 KiB pages it was measured 9-29 % slower (SmolLM2-135M F16 at 2
    and 1 threads, same bytes, one process; NOTES.md). A file already cached
    in 4 KiB pages stays so until the cache drops it (`pyllama-q warm`,
    pagecache.py, can do that); nothing is copied either way. Elsewhere this
    is a no-op.
    """
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None:
        return
    try:
        m.madvise(advice)
    except (OSError, ValueError):
        pass


class GGUFFile(Closable):
    """An opened, validated GGUF file.

    `metadata`: dict key -> str | int | float | bool | numpy array (numeric
    arrays) | list[str]. `tensors`: dict name -> TensorInfo, in file order.
    Tensor data stays in the memory map: `array(name)` and `address(name)`
    give views, never copies.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._map = None
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise FormatError(f"{self.path}: file is empty, not a GGUF file")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        _advise_huge(self._map)
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    def _parse(self):
        cur = _Cursor(self._map, self.path)
        cur.need(4, "magic")
        if self._map[:4] != GGUF_MAGIC:
            raise FormatError(f"{self.path}: not a GGUF file (magic {bytes(self._map[:4])!r})")
        cur.pos = 4
        self.version = cur.u32("version")
        if self.version not in (2, 3):
            cur.fail(f"unsupported GGUF version {self.version} (this reader knows 2 and 3)")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # Each key/value takes >= 13 bytes, each tensor info >= 24: a count
        # the file cannot hold is corruption, not a reason to loop for hours.
        if n_kv * 13 + n_tensors * 24 > cur.size - cur.pos:
            cur.fail(f"counts ({n_tensors} tensors, {n_kv} metadata keys) exceed the file size")

        self.metadata = {}
        for _ in range(n_kv):
            key = cur.string("metadata key")
            vtype = cur.u32(f"type of {key!r}")
            if key in self.metadata:
                cur.fail(f"duplicate metadata key {key!r}")
            self.metadata[key] = cur.value(vtype, f"metadata {key!r}")

        align = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            cur.fail(f"general.alignment {align!r} is not a positive power of two")
        self.alignment = align

        infos = []
        for _ in range(n_tensors):
            name = cur.string("tensor name")
            n_dims = cur.u32(f"tensor {name!r} n_dims")
            if not 1 <= n_dims <= MAX_DIMS:
                cur.fail(f"tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
            shape = tuple(cur.u64(f"tensor {name!r} dims") for _ in range(n_dims))
            tid = cur.u32(f"tensor {name!r} type")
            offset = cur.u64(f"tensor {name!r} offset")
            infos.append((name, shape, tid, offset))
        data_start = -(-cur.pos // align) * align
        self.data_offset = data_start

        self.tensors = {}
        for name, shape, tid, offset in infos:
            where = f"{self.path}: tensor {name!r}"
            if name in self.tensors:
                raise FormatError(f"{where}: duplicate tensor name")
            if tid not in GGML_TYPES:
                raise FormatError(f"{where}: unknown ggml type id {tid}")
            n = 1
            for d in shape:
                if d == 0 or d > 1 << 40:
                    raise FormatError(f"{where}: bad dimension {d} in shape {shape}")
                n *= d
            if n > 1 << 42:
                raise FormatError(f"{where}: {n} elements is beyond any real model")
            try:
                nbytes = row_bytes(tid, shape[0]) * (n // shape[0])
            except FormatError as e:
                raise FormatError(f"{where}: {e}") from None
            if offset % align:
                raise FormatError(f"{where}: data offset {offset} is not {align}-byte aligned")
            start = data_start + offset
            if start + nbytes > len(self._map):
                raise FormatError(f"{where}: data ({nbytes} bytes at {start}) runs past the "
                                  f"end of the file ({len(self._map)} bytes); truncated?")
            self.tensors[name] = TensorInfo(name, tid, shape, start, nbytes)

        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors.values())
        for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
            if start_b < end_a:
                raise FormatError(f"{self.path}: tensors {a!r} and {b!r} overlap")

    # -- access ------------------------------------------------------------
    def __contains__(self, name):
        return name in self.tensors

    def get(self, key, default=None):
        return self.metadata.get(key, default)

    def raw(self, name):
        """uint8 view of a tensor's bytes."""
        t = self.tensors[name]
        return np.frombuffer(self._map, dtype=np.uint8, count=t.nbytes, offset=t.offset)

    def array(self, name):
        """A view shaped numpy-style (reversed GGUF dims): float types typed
        (F32/F16/BF16 as uint16 bits for BF16), block types as raw rows of
        bytes with shape (..., row_bytes)."""
        t = self.tensors[name]
        raw = self.raw(name)
        shape = tuple(reversed(t.shape))
        dtype = {0: np.float32, 1: np.float16, 30: np.uint16, 24: np.int8, 25: np.int16,
                 26: np.int32, 27: np.int64, 28: np.float64}.get(t.type)
        if dtype is not None:
            return raw.view(dtype).reshape(shape)
        return raw.reshape(shape[:-1] + (row_bytes(t.type, t.shape[0]),))

    def address(self, name):
        """Integer address of a tensor's first byte inside the map (for C)."""
        return self.raw(name).__array_interface__["data"][0]

    @property
    def buffer(self):
        return self._map

    def close(self):
        m, self._map = self._map, None
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass  # views still alive: the map closes when they are collected


    def __repr__(self):
        return f"GGUFFile({self.path!r}, v{self.version}, {len(self.tensors)} tensors)"
