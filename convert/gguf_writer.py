"""gguf_writer.py: a small GGUF v3 writer for the converter.

What it is: the file layout llama.cpp reads -- header, key/value metadata,
tensor infos, then tensor data, each tensor aligned to `general.alignment`
(32) bytes -- written in two phases so tensors can be streamed one at a time:
declare every tensor (name, numpy shape, GGML type) first, write the header,
then hand over each tensor's bytes in declaration order.
What it is not: a reader, or a general GGUF library (the `gguf` package is
the test oracle, never a runtime dependency).

Format facts (GGUF v3, little-endian): magic b"GGUF", u32 version, u64
tensor count, u64 kv count; a string is u64 length + UTF-8 bytes; a value is
u32 type + payload; an array is u32 element type + u64 count + elements; a
tensor info is name, u32 n_dims, n_dims x u64 dims (ne0 first, i.e. numpy
shape reversed), u32 ggml type, u64 offset from the start of the data area.
"""
import struct

import numpy as np

from .errors import ConvertError

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32

# GGUF value types
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, \
    T_STRING, T_ARRAY, T_UINT64, T_INT64, T_FLOAT64 = range(13)

_SCALAR_FMT = {T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h",
               T_UINT32: "<I", T_INT32: "<i", T_FLOAT32: "<f", T_BOOL: "<?",
               T_UINT64: "<Q", T_INT64: "<q", T_FLOAT64: "<d"}
_NUMPY_OF = {T_UINT8: "<u1", T_INT8: "<i1", T_UINT16: "<u2", T_INT16: "<i2",
             T_UINT32: "<u4", T_INT32: "<i4", T_FLOAT32: "<f4", T_BOOL: "<?",
             T_UINT64: "<u8", T_INT64: "<i8", T_FLOAT64: "<f8"}

# The converter's writes go out in whole chunks of this size, at offsets that
# are multiples of it (see ChunkedFile).
WRITE_CHUNK = 4 << 20


class ChunkedFile:
    """A write-only file object that hands the OS writes that start and end
    at multiples of WRITE_CHUNK in the file (only the last one ends short).

    Why: Linux caches a file written this way in 2 MiB page-cache folios
    (ext4 on 6.18, measured: aligned 4-8 MiB writes cached 64 of 64 MiB so,
    100 KB writes none), and the runtime maps such a file with 2 MiB pages,
    which a decode step reads faster (pyllama_q/gguf.py, _advise_huge). A
    model is usually run right after it is converted, from that cache.
    """

    def __init__(self, f):
        self._f = f
        self._buf = bytearray(WRITE_CHUNK)
        self._fill = 0   # bytes of _buf in use; the file so far is a multiple of WRITE_CHUNK

    def _put(self, mv):
        while len(mv):   # a raw file may write less than asked
            n = self._f.write(mv)
            if not n:
                raise OSError(f"write to {getattr(self._f, 'name', 'output')} made no progress")
            mv = mv[n:]

    def write(self, data):
        mv = memoryview(data).cast("B")
        size = len(mv)
        if self._fill:   # complete the pending chunk first
            take = min(size, WRITE_CHUNK - self._fill)
            self._buf[self._fill:self._fill + take] = mv[:take]
            self._fill += take
            mv = mv[take:]
            if self._fill < WRITE_CHUNK:
                return size
            self._put(memoryview(self._buf))
            self._fill = 0
        whole = len(mv) // WRITE_CHUNK * WRITE_CHUNK
        if whole:   # whole chunks straight from the caller's buffer
            self._put(mv[:whole])
        rest = len(mv) - whole
        self._buf[:rest] = mv[whole:]
        self._fill = rest
        return size

    def flush(self):
        """Write what is buffered (a short chunk: call at the end only)."""
        if self._fill:
            self._put(memoryview(self._buf)[:self._fill])
            self._fill = 0
        self._f.flush()

    def fileno(self):
        return self._f.fileno()


# GGML tensor types we write, and their (elements per block, bytes per block)
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0, GGML_BF16 = 0, 1, 2, 3, 8, 30
BLOCK = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_Q4_0: (32, 18), GGML_Q4_1: (32, 20),
         GGML_Q8_0: (32, 34), GGML_BF16: (1, 2)}
TYPE_NAME = {GGML_F32: "F32", GGML_F16: "F16", GGML_Q4_0: "Q4_0", GGML_Q4_1: "Q4_1",
             GGML_Q8_0: "Q8_0", GGML_BF16: "BF16"}


def tensor_nbytes(shape, ggml_type):
    """Bytes of a tensor of numpy `shape` (rows last-dim contiguous) in `ggml_type`."""
    blk, size = BLOCK[ggml_type]
    n_cols = shape[-1]
    if n_cols % blk:
        raise ConvertError(f"row length {n_cols} is not a multiple of the block size {blk}")
    n = 1
    for d in shape:
        n *= int(d)
    return n // blk * size


def _pad(n, align=ALIGNMENT):
    return (align - n % align) % align


def _string(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


class GGUFWriter:
    """Collects metadata and tensor declarations, then writes a GGUF v3 file.

    Usage: add_* metadata, declare_tensor() each tensor, write_header(f),
    then write_tensor_data(f, name, bytes) for each tensor in order.
    """

    def __init__(self):
        self.kv = []            # (key, encoded value bytes)
        self._keys = set()
        self.tensors = []       # (name, numpy shape, ggml type, nbytes, offset)
        self._data_size = 0
        self._next = 0

    # ---- metadata ----------------------------------------------------------
    def _add(self, key, payload):
        if key in self._keys:
            raise ConvertError(f"duplicate metadata key {key}")
        self._keys.add(key)
        self.kv.append((key, payload))

    def add_scalar(self, key, vtype, value):
        if vtype == T_STRING:
            self._add(key, struct.pack("<I", T_STRING) + _string(value))
        else:
            self._add(key, struct.pack("<I", vtype) + struct.pack(_SCALAR_FMT[vtype], value))

    def add_u32(self, key, v):
        self.add_scalar(key, T_UINT32, int(v))

    def add_i32(self, key, v):
        self.add_scalar(key, T_INT32, int(v))

    def add_f32(self, key, v):
        self.add_scalar(key, T_FLOAT32, float(v))

    def add_bool(self, key, v):
        self.add_scalar(key, T_BOOL, bool(v))

    def add_string(self, key, v):
        self.add_scalar(key, T_STRING, v)

    def add_array(self, key, vtype, values):
        """An array of scalars (numpy fast path) or of strings."""
        head = struct.pack("<IIQ", T_ARRAY, vtype, len(values))
        if vtype == T_STRING:
            body = b"".join(_string(v) for v in values)
        else:
            body = np.asarray(values, dtype=_NUMPY_OF[vtype]).tobytes()
        self._add(key, head + body)

    def add_raw(self, key, payload):
        """A value already encoded as u32 type + payload (copied from a GGUF input)."""
        self._add(key, payload)

    # ---- tensors -----------------------------------------------------------
    def declare_tensor(self, name, shape, ggml_type):
        """Reserve space for a tensor; `shape` is the numpy shape (rows, cols)."""
        nbytes = tensor_nbytes(shape, ggml_type)
        self.tensors.append((name, tuple(int(d) for d in shape), ggml_type, nbytes, self._data_size))
        self._data_size += nbytes + _pad(nbytes)
        return nbytes

    def header_bytes(self):
        out = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(self.tensors), len(self.kv))]
        for key, payload in self.kv:
            out.append(_string(key))
            out.append(payload)
        for name, shape, t, _, off in self.tensors:
            out.append(_string(name))
            out.append(struct.pack("<I", len(shape)))
            out.append(struct.pack(f"<{len(shape)}Q", *reversed(shape)))  # ne0 first
            out.append(struct.pack("<IQ", t, off))
        head = b"".join(out)
        return head + b"\0" * _pad(len(head))

    def write_header(self, f):
        f.write(self.header_bytes())
        self._next = 0

    def write_tensor_data(self, f, name, chunks):
        """Write the next declared tensor's bytes (an iterable of buffers)."""
        tname, shape, t, nbytes, off = self.tensors[self._next]
        if tname != name:
            raise ConvertError(f"tensor {name} written out of order (expected {tname})")
        n = 0
        for c in chunks:
            mv = memoryview(c).cast("B")
            f.write(mv)
            n += len(mv)
        if n != nbytes:
            raise ConvertError(f"tensor {name}: wrote {n} bytes, declared {nbytes}")
        f.write(b"\0" * _pad(nbytes))
        self._next += 1

    def total_data_bytes(self):
        return self._data_size
