"""readers.py: lazy tensor views over checkpoint files, without torch.

What it is: readers for safetensors (JSON header + raw bytes), PyTorch zip
archives (.pth / pytorch_model.bin, read with an allowlist unpickler) and
GGUF (F32/F16/BF16, or quantized types for --allow-requantize), each giving
`Src` objects: a shape plus read(r0, r1) -> float32 rows, so the converter
holds one tensor (or one chunk of rows) in memory at a time. Row sources
compose: RowPermSrc (the q/k permutation) and ConcatSrc (Meta model-parallel
shards).
What it is not: a general deserializer. A pickle naming any global outside
the allowlist is refused before anything in it runs.
"""
import json
import mmap
import os
import pickle
import struct
import zipfile

import numpy as np

from .errors import ConvertError

# ---- float sources -----------------------------------------------------------


def bf16_to_f32(u16):
    """bf16 bits (uint16 array) -> float32: the bf16 bits are the high half
    (shifted in place: one pass fewer than `astype(...) << 16`)."""
    t = u16.astype(np.uint32)
    t <<= 16
    return t.view(np.float32)


class Src:
    """A tensor to be converted: `shape` (numpy order), `where` (file: name,
    for messages) and read(r0, r1) -> float32 array of rows r0..r1 (for a 1-D
    tensor, the whole vector with r0=0, r1=1)."""

    shape = ()
    where = ""

    @property
    def n_rows(self):
        return self.shape[0] if len(self.shape) > 1 else 1

    def read(self, r0, r1):
        raise NotImplementedError

    def release(self):
        """Called once the tensor is written: give back what reading it mapped."""

    def read_all(self):
        x = self.read(0, self.n_rows)
        return x.reshape(self.shape)


class ArraySrc(Src):
    """A numpy view (memory-mapped) of raw stored values. kind: F32|F16|BF16
    (BF16 arrives as uint16 bits). `mm`, if given, is the mmap the view lies
    in: release() drops the tensor's pages from this process once written."""

    def __init__(self, arr, kind, where, mm=None):
        self.arr, self.kind, self.where, self.mm = arr, kind, where, mm
        self.shape = tuple(int(d) for d in arr.shape)

    def release(self):
        """Unmap the tensor's pages from our RSS (MADV_DONTNEED on a read-only
        file mapping: the page cache keeps them, the process drops them)."""
        if self.mm is None or not hasattr(mmap, "MADV_DONTNEED") or self.arr.size == 0:
            return
        base = np.frombuffer(self.mm, dtype=np.uint8).__array_interface__["data"][0]
        start = self.arr.__array_interface__["data"][0] - base
        end = start + self.arr.nbytes
        page = mmap.PAGESIZE
        lo, hi = -(-start // page) * page, end // page * page   # whole pages inside the tensor
        if hi > lo:
            try:
                self.mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):
                pass

    def read(self, r0, r1):
        a = self.arr[r0:r1] if self.arr.ndim > 1 else self.arr
        if self.kind == "BF16":
            return bf16_to_f32(np.ascontiguousarray(a))
        return np.ascontiguousarray(a, dtype=np.float32)


class RowPermSrc(Src):
    """Rows reordered: output row i is source row perm[i]."""

    def __init__(self, src, perm):
        self.src, self.perm, self.shape, self.where = src, perm, src.shape, src.where

    def release(self):
        self.src.release()

    def read(self, r0, r1):
        idx = self.perm[r0:r1]
        lo, hi = int(idx.min()), int(idx.max()) + 1
        return self.src.read(lo, hi)[idx - lo]


class ConcatSrc(Src):
    """Model-parallel shards joined along axis 0 (rows) or 1 (columns)."""

    def __init__(self, srcs, axis):
        self.srcs, self.axis, self.where = srcs, axis, srcs[0].where
        shape = list(srcs[0].shape)
        shape[axis] = sum(s.shape[axis] for s in srcs)
        self.shape = tuple(shape)
        self.starts = np.cumsum([0] + [s.shape[0] for s in srcs])

    def release(self):
        for s in self.srcs:
            s.release()

    def read(self, r0, r1):
        if self.axis == 1:
            return np.concatenate([s.read(r0, r1) for s in self.srcs], axis=1)
        parts = []
        for s, a in zip(self.srcs, self.starts[:-1]):
            lo, hi = max(r0, a), min(r1, a + s.shape[0])
            if lo < hi:
                parts.append(s.read(lo - a, hi - a))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


class ConstSrc(Src):
    """A small tensor computed by the converter (rope_freqs)."""

    def __init__(self, arr, where):
        self.arr, self.shape, self.where = np.asarray(arr, np.float32), tuple(np.shape(arr)), where

    def read(self, r0, r1):
        return self.arr[r0:r1] if self.arr.ndim > 1 else self.arr


# ---- safetensors ---------------------------------------------------------------

_ST_DTYPES = {"F32": ("<f4", "F32"), "F16": ("<f2", "F16"), "BF16": ("<u2", "BF16")}


def read_safetensors(path):
    """{name: ArraySrc} over one .safetensors file, after checking the header:
    u64 header length, JSON {name: {dtype, shape, data_offsets}}, offsets
    inside the data area and matching shape x dtype size."""
    base = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConvertError(f"{base}: truncated safetensors file (no header length)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100 << 20:
                raise ConvertError(f"{base}: truncated safetensors header "
                                   f"(says {n} bytes, file has {size - 8})")
            raw = f.read(n)
    except OSError as e:
        raise ConvertError(f"{base}: {e.strerror}") from None
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ConvertError(f"{base}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ConvertError(f"{base}: safetensors header is not a JSON object")
    data_start, data_len = 8 + n, size - 8 - n
    raw_mm = None
    if data_len > 0:
        with open(path, "rb") as f:
            raw_mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mm = np.frombuffer(raw_mm, dtype=np.uint8)
    else:
        mm = np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (b, e) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ConvertError(f"{base}: tensor {name}: malformed header entry") from None
        if dtype not in _ST_DTYPES:
            raise ConvertError(f"{base}: tensor {name}: dtype {dtype} is not a float type we convert")
        np_dt, kind = _ST_DTYPES[dtype]
        want = int(np.prod(shape, dtype=np.int64)) * np.dtype(np_dt).itemsize
        if not (0 <= b <= e <= data_len) or e - b != want or min(shape, default=1) < 0:
            raise ConvertError(f"{base}: tensor {name}: offsets {b}..{e} do not fit shape "
                               f"{tuple(shape)} {dtype} in a data area of {data_len} bytes")
        arr = mm[data_start + b:data_start + e].view(np_dt).reshape(shape)
        out[name] = ArraySrc(arr, kind, f"{base}: {name}", raw_mm)
    return out


# ---- PyTorch zip archives (.pth, pytorch_model.bin) ----------------------------

_STORAGES = {"FloatStorage": ("<f4", "F32"), "HalfStorage": ("<f2", "F16"),
             "BFloat16Storage": ("<u2", "BF16")}


class _Storage:
    def __init__(self, np_dt, kind, key):
        self.np_dt, self.kind, self.key = np_dt, kind, key


class _TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _StateDictUnpickler(pickle.Unpickler):
    """Only what a state dict of float tensors needs; any other global is
    refused (never imported, never called)."""

    def __init__(self, f, where):
        super().__init__(f)
        self.where = where

    def find_class(self, module, name):
        import collections

        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGES:
            return name
        if module == "torch" and name in ("float32", "float16", "bfloat16"):
            return name
        raise ConvertError(f"{self.where}: refusing to load: the pickle names the global "
                           f"{module}.{name}, which a state dict does not need")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and pid[1] in _STORAGES):
            raise ConvertError(f"{self.where}: unexpected storage reference {pid!r:.80}")
        np_dt, kind = _STORAGES[pid[1]]
        return _Storage(np_dt, kind, str(pid[2]))


def _flatten_state(obj, where):
    """The {name: _TensorRef} dict, unwrapping {'model': ...} / {'state_dict': ...}."""
    if isinstance(obj, dict) and not any(isinstance(v, _TensorRef) for v in obj.values()):
        for k in ("model", "state_dict", "module"):
            if isinstance(obj.get(k), dict):
                return _flatten_state(obj[k], where)
    if not isinstance(obj, dict):
        raise ConvertError(f"{where}: does not hold a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, _TensorRef)}


def read_torch_zip(path):
    """{name: ArraySrc} over a torch.save zip archive, memory-mapped."""
    base = os.path.basename(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ConvertError(f"{base}: not a zip archive (legacy torch pickles are not read)") from None
    except OSError as e:
        raise ConvertError(f"{base}: {e.strerror}") from None
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise ConvertError(f"{base}: expected one data.pkl in the archive, found {len(pkl)}")
        prefix = pkl[0][:-len("data.pkl")]
        import io

        state = _StateDictUnpickler(io.BytesIO(zf.read(pkl[0])), base).load()
        infos = {i.filename: i for i in zf.infolist()}
    refs = _flatten_state(state, base)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    buf = np.frombuffer(mm, dtype=np.uint8)
    out, storages = {}, {}
    for name, t in refs.items():
        st = t.storage
        if st.key not in storages:
            info = infos.get(f"{prefix}data/{st.key}")
            if info is None:
                raise ConvertError(f"{base}: tensor {name}: storage data/{st.key} missing from the archive")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ConvertError(f"{base}: tensor {name}: compressed storage is not supported")
            h = info.header_offset
            if buf[h:h + 4].tobytes() != b"PK\x03\x04":
                raise ConvertError(f"{base}: tensor {name}: bad zip entry header")
            n_name, n_extra = struct.unpack("<HH", buf[h + 26:h + 30].tobytes())
            start = h + 30 + n_name + n_extra
            if start + info.file_size > len(buf):
                raise ConvertError(f"{base}: tensor {name}: storage runs past the end of the file")
            itemsize = np.dtype(st.np_dt).itemsize
            storages[st.key] = buf[start:start + info.file_size - info.file_size % itemsize].view(st.np_dt)
        arr = storages[st.key]
        # the last element addressed must lie inside the storage
        span = t.offset + sum((s - 1) * d for s, d in zip(t.size, t.stride)) + 1 if all(t.size) else 0
        if t.offset < 0 or any(d < 0 for d in t.stride) or span > arr.size:
            raise ConvertError(f"{base}: tensor {name}: shape {t.size} runs past its storage")
        item = arr.itemsize
        view = np.lib.stride_tricks.as_strided(arr[t.offset:], shape=t.size,
                                               strides=[d * item for d in t.stride], writeable=False)
        out[name] = ArraySrc(view, st.kind, f"{base}: {name}", mm)
    return out


# ---- GGUF (input) --------------------------------------------------------------------

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}
# ggml types: (elements per block, bytes per block, name)
GGML_TYPES = {0: (1, 4, "F32"), 1: (1, 2, "F16"), 2: (32, 18, "Q4_0"), 3: (32, 20, "Q4_1"),
              6: (32, 22, "Q5_0"), 7: (32, 24, "Q5_1"), 8: (32, 34, "Q8_0"), 10: (256, 84, "Q2_K"),
              11: (256, 110, "Q3_K"), 12: (256, 144, "Q4_K"), 13: (256, 176, "Q5_K"),
              14: (256, 210, "Q6_K"), 30: (1, 2, "BF16")}


class _Cursor:
    def __init__(self, buf, where):
        self.buf, self.pos, self.where = buf, 0, where

    def take(self, n):
        if n < 0 or self.pos + n > len(self.buf):
            raise ConvertError(f"{self.where}: truncated GGUF header")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self):
        n = self.unpack("<Q")
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError:
            raise ConvertError(f"{self.where}: GGUF string is not UTF-8") from None

    def value(self, vtype):
        if vtype in _GGUF_SCALARS:
            return self.unpack(_GGUF_SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            et, n = self.unpack("<I"), self.unpack("<Q")
            if et in _GGUF_SCALARS:
                dt = np.dtype(_GGUF_SCALARS[et])
                return np.frombuffer(self.take(n * dt.itemsize), dtype=dt).copy()
            if n > len(self.buf):
                raise ConvertError(f"{self.where}: GGUF array count {n} is impossible")
            return [self.value(et) for _ in range(n)]
        raise ConvertError(f"{self.where}: unknown GGUF value type {vtype}")


class GGUFInput:
    """A GGUF file opened for re-quantization: kv {key: (raw bytes, value)},
    tensors [(name, numpy shape, ggml type, byte view)]."""

    def __init__(self, path):
        base = os.path.basename(path)
        with open(path, "rb") as f:
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        buf = memoryview(self.mm)
        c = _Cursor(buf, base)
        if bytes(c.take(4)) != b"GGUF":
            raise ConvertError(f"{base}: not a GGUF file (bad magic)")
        version = c.unpack("<I")
        if version not in (2, 3):
            raise ConvertError(f"{base}: GGUF version {version} is not supported")
        n_tensors, n_kv = c.unpack("<Q"), c.unpack("<Q")
        if n_tensors > 1 << 20 or n_kv > 1 << 20:
            raise ConvertError(f"{base}: implausible GGUF counts ({n_tensors} tensors, {n_kv} keys)")
        self.kv = {}
        for _ in range(n_kv):
            key = c.string()
            start = c.pos
            vtype = c.unpack("<I")
            val = c.value(vtype)
            self.kv[key] = (bytes(buf[start:c.pos]), val)
        infos = []
        for _ in range(n_tensors):
            name = c.string()
            nd = c.unpack("<I")
            if nd > 4:
                raise ConvertError(f"{base}: tensor {name}: {nd} dimensions")
            ne = [c.unpack("<Q") for _ in range(nd)]
            t, off = c.unpack("<I"), c.unpack("<Q")
            if t not in GGML_TYPES:
                raise ConvertError(f"{base}: tensor {name}: unknown ggml type {t}")
            infos.append((name, tuple(reversed(ne)), t, off))
        align = int(self.kv.get("general.alignment", (None, 32))[1])
        data = c.pos + (align - c.pos % align) % align
        self.tensors = []
        for name, shape, t, off in infos:
            blk, size, tname = GGML_TYPES[t]
            n = int(np.prod(shape, dtype=np.int64))
            if shape and shape[-1] % blk:
                raise ConvertError(f"{base}: tensor {name}: row of {shape[-1]} is not whole {tname} blocks")
            nbytes = n // blk * size
            if data + off + nbytes > len(buf):
                raise ConvertError(f"{base}: tensor {name}: data runs past the end of the file")
            view = np.frombuffer(self.mm, dtype=np.uint8, count=nbytes, offset=data + off)
            self.tensors.append((name, shape, t, view))
        self.where = base


class GGUFQuantSrc(Src):
    """A quantized GGUF tensor, dequantized row-chunk by row-chunk with the C
    kernels (only with --allow-requantize)."""

    def __init__(self, raw, shape, ggml_type, where):
        self.raw, self.shape, self.type, self.where = raw, shape, ggml_type, where
        blk, size, _ = GGML_TYPES[ggml_type]
        self.row_bytes = shape[-1] // blk * size

    def read(self, r0, r1):
        from .quantize import dequantize_rows

        n_cols = self.shape[-1]
        if len(self.shape) == 1:
            r0, r1 = 0, 1
        raw = self.raw[r0 * self.row_bytes:r1 * self.row_bytes]
        return dequantize_rows(self.type, raw, r1 - r0, n_cols, self.where)


def gguf_src(raw, shape, t, where, mm=None):
    _, _, name = GGML_TYPES[t]
    if name in ("F32", "F16", "BF16"):
        dt = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}[name]
        return ArraySrc(raw.view(dt).reshape(shape), name, where, mm)
    return GGUFQuantSrc(raw, shape, t, where)
