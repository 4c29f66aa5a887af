"""Block formats: the C reference encoders/decoders against the gguf package.

gguf.quants (llama.cpp's numpy twin of ggml's reference C) is the oracle:
quantize must agree byte for byte, dequantize value for value.
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf import quants as gq

from pyllama_q._pq import ffi, lib

TYPES = {
    "Q4_0": (lib.PQ_TYPE_Q4_0, GT.Q4_0),
    "Q4_1": (lib.PQ_TYPE_Q4_1, GT.Q4_1),
    "Q8_0": (lib.PQ_TYPE_Q8_0, GT.Q8_0),
}


def pq_quantize(ptype, x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = x.shape
    rb = cols // lib.pq_type_block_size(ptype) * lib.pq_type_block_bytes(ptype)
    out = np.zeros((rows, rb), dtype=np.uint8)
    st = lib.pq_quantize(ptype, ffi.cast("float *", x.ctypes.data),
                         ffi.cast("void *", out.ctypes.data), rows, cols)
    assert st == lib.PQ_OK, ffi.string(lib.pq_status_str(st))
    return out


def pq_dequantize(ptype, q, rows, cols):
    q = np.ascontiguousarray(q)
    out = np.full((rows, cols), np.nan, dtype=np.float32)
    st = lib.pq_dequantize(ptype, ffi.cast("void *", q.ctypes.data),
                           ffi.cast("float *", out.ctypes.data), rows, cols)
    assert st == lib.PQ_OK, ffi.string(lib.pq_status_str(st))
    return out


def sample(kind, rows, cols, seed):
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal((rows, cols))
    elif kind == "tiny":
        x = rng.standard_normal((rows, cols)) * 1e-6
    elif kind == "large":
        x = rng.standard_normal((rows, cols)) * 3e3
    elif kind == "zeros":
        x = rng.standard_normal((rows, cols))
        x[:, : cols // 2] = 0.0       # whole zero blocks
        x[0, 32:40] = 0.0             # partial zeros
    elif kind == "outliers":
        x = rng.standard_normal((rows, cols))
        idx = rng.integers(0, x.size, size=max(1, x.size // 50))
        x.flat[idx] *= 100.0
    elif kind == "positive":          # exercises Q4_1's min > 0 and Q4_0's sign
        x = rng.random((rows, cols)) + 0.5
    elif kind == "ties":              # values landing on x*id = k + 0.5 boundaries
        x = rng.integers(-254, 255, size=(rows, cols)) / 2.0
        x[:, 0::32] = 127.0
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


KINDS = ["normal", "tiny", "large", "zeros", "outliers", "positive", "ties"]


@pytest.mark.parametrize("name", sorted(TYPES))
@pytest.mark.parametrize("kind", KINDS)
def test_quantize_bit_exact_with_gguf(name, kind):
    ptype, gtype = TYPES[name]
    x = sample(kind, 7, 256, seed=hash((name, kind)) % 2**32)
    ours = pq_quantize(ptype, x)
    ref = gq.quantize(x, gtype)
    assert ours.shape == ref.shape
    bad = np.nonzero((ours != ref).any(axis=1))[0]
    assert bad.size == 0, f"{name}/{kind}: rows {bad.tolist()} differ from gguf"


@pytest.mark.parametrize("name", sorted(TYPES))
def test_dequantize_equals_gguf(name):
    ptype, gtype = TYPES[name]
    x = sample("outliers", 5, 512, seed=3)
    q = gq.quantize(x, gtype)
    ours = pq_dequantize(ptype, q, 5, 512)
    ref = gq.dequantize(q, gtype)
    np.testing.assert_array_equal(ours, ref)


# Named error thresholds: max |x - dequant(quant(x))| / amax(block) for N(0,1)
# data; Q8_0 rounds to half a step of amax/127, Q4_0 to about a step of
# amax/8 (the -8 end wastes half a step), Q4_1 to half a step of range/15.
ROUNDTRIP_MAX_REL = {"Q8_0": 0.5 / 127 + 1e-3, "Q4_0": 1.0 / 8 + 1e-3, "Q4_1": 0.5 / 15 * 2 + 1e-3}


@pytest.mark.parametrize("name", sorted(TYPES))
def test_roundtrip_error_within_format_bound(name):
    ptype, _ = TYPES[name]
    x = sample("normal", 16, 1024, seed=11)
    y = pq_dequantize(ptype, pq_quantize(ptype, x), 16, 1024)
    xb = x.reshape(-1, 32)
    rng_ = (xb.max(1) - xb.min(1)) if name == "Q4_1" else np.abs(xb).max(1)
    rel = (np.abs(y.reshape(-1, 32) - xb).max(1) / rng_).max()
    assert rel <= ROUNDTRIP_MAX_REL[name], rel


def test_q8_1_scale_and_sum():
    x = sample("normal", 3, 128, seed=5)
    q = pq_quantize(lib.PQ_TYPE_Q8_1, x).reshape(-1, 36)
    d = q[:, 0:2].copy().view(np.float16).astype(np.float32).ravel()
    s = q[:, 2:4].copy().view(np.float16).astype(np.float32).ravel()
    qs = q[:, 4:].view(np.int8).astype(np.int32)
    # The integer part must equal Q8_0's (same d, same rounding).
    q80 = gq.quantize(x, GT.Q8_0).reshape(-1, 34)
    np.testing.assert_array_equal(q[:, 0:2], q80[:, 0:2])
    np.testing.assert_array_equal(q[:, 4:], q80[:, 2:])
    # s = fp16(d * sum(q)), d computed in f32 before its fp16 rounding.
    amax = np.abs(x.reshape(-1, 32)).max(1)
    d32 = (amax / np.float32(127)).astype(np.float32)
    s_ref = (qs.sum(1).astype(np.float32) * d32).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(s, s_ref)
    np.testing.assert_array_equal(d, d32.astype(np.float16).astype(np.float32))


def test_fp16_conversion_exact_vs_numpy():
    # Every fp16 bit pattern decodes like numpy; f32 values near every fp16
    # (incl. ties, subnormals, overflow) encode like numpy (round to nearest even).
    allh = np.arange(65536, dtype=np.uint16)
    got = pq_dequantize(lib.PQ_TYPE_F16, allh, 1, 65536).ravel()
    ref = allh.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))  # NaN payloads too
    finite = ref[np.isfinite(ref)].astype(np.float64)
    finite = np.unique(finite)
    mids = (finite[:-1] + finite[1:]) / 2
    rng = np.random.default_rng(0)
    x = np.concatenate([finite, mids, np.nextafter(mids.astype(np.float32), np.inf),
                        np.nextafter(mids.astype(np.float32), -np.inf),
                        rng.standard_normal(10000) * 10.0 ** rng.integers(-9, 6, 10000),
                        [65519.0, 65520.0, 1e6, -1e6, np.inf, -np.inf]]).astype(np.float32)
    q = pq_quantize(lib.PQ_TYPE_F16, x.reshape(1, -1)).view(np.uint16).ravel()
    with np.errstate(over="ignore"):  # the overflow to inf is part of the test
        ref16 = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(q, ref16)


def test_bf16_matches_gguf():
    x = sample("outliers", 2, 64, seed=9)
    q = pq_quantize(lib.PQ_TYPE_BF16, x)
    np.testing.assert_array_equal(q.ravel(), gq.quantize(x, GT.BF16).view(np.uint8).ravel())
    y = pq_dequantize(lib.PQ_TYPE_BF16, q, 2, 64)
    np.testing.assert_array_equal(y, gq.dequantize(q.ravel(), GT.BF16).reshape(2, 64))


def test_type_helpers():
    assert lib.pq_type_block_size(lib.PQ_TYPE_Q4_0) == 32
    assert lib.pq_type_block_bytes(lib.PQ_TYPE_Q4_0) == 18
    assert lib.pq_type_block_bytes(lib.PQ_TYPE_Q4_1) == 20
    assert lib.pq_type_block_bytes(lib.PQ_TYPE_Q8_0) == 34
    assert lib.pq_type_block_bytes(lib.PQ_TYPE_Q8_1) == 36
    assert lib.pq_type_block_bytes(lib.PQ_TYPE_F16) == 2
    assert lib.pq_type_block_size(77) == 0 and lib.pq_type_block_bytes(77) == 0
    for t in (lib.PQ_TYPE_F32, lib.PQ_TYPE_F16, lib.PQ_TYPE_BF16, lib.PQ_TYPE_Q4_0,
              lib.PQ_TYPE_Q4_1, lib.PQ_TYPE_Q8_0):
        assert lib.pq_type_supported(t) == 1
    assert lib.pq_type_supported(lib.PQ_TYPE_Q8_1) == 0
    assert lib.pq_type_supported(77) == 0


def test_bad_arguments():
    x = np.zeros((1, 48), dtype=np.float32)
    out = np.zeros(64, dtype=np.uint8)
    xp, op = ffi.cast("float *", x.ctypes.data), ffi.cast("void *", out.ctypes.data)
    assert lib.pq_quantize(lib.PQ_TYPE_Q4_0, xp, op, 1, 48) == lib.PQ_ERR_SHAPE
    assert lib.pq_quantize(77, xp, op, 1, 32) == lib.PQ_ERR_TYPE
    assert lib.pq_quantize(lib.PQ_TYPE_Q4_0, ffi.NULL, op, 1, 32) == lib.PQ_ERR_ARG
    assert lib.pq_dequantize(lib.PQ_TYPE_Q8_0, op, xp, 1, 40) == lib.PQ_ERR_SHAPE
