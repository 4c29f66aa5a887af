"""Tests of the benchmark's pieces: that they measure the right work.
No timings here (timings are benchmarks/compare.py's business)."""
import numpy as np
import pytest

import gguf
from benchmarks import make_models
from pyllama_q._pq import ffi, lib
from pyllama_q.model import KVContext, Weights

PQ_ERR_ARG = 2


def _greedy_python(kv, first, n):
    out, tok = [], first
    for pos in range(n):
        tok = int(np.argmax(kv.eval([tok], pos)))
        out.append(tok)
    return out


def test_bench_decode_matches_python_loop(sample_model):
    """pq_ctx_bench_decode does the same steps as a Python greedy loop."""
    with Weights(sample_model, n_threads=1) as w, KVContext(w, 64, n_batch=16) as kv:
        ref = _greedy_python(kv, 504, 12)
        buf = ffi.new("int32_t[]", [-1] * 12)
        assert lib.pq_ctx_bench_decode(kv._ptr, w.n_vocab, 504, 0, 12, buf) == 0
        assert list(buf) == ref
        # continuing from a later position works as eval would
        buf2 = ffi.new("int32_t[]", [-1] * 4)
        assert lib.pq_ctx_bench_decode(kv._ptr, w.n_vocab, ref[7], 8, 4, buf2) == 0
        assert list(buf2) == ref[8:12]


def test_bench_decode_rejects_bad_arguments(sample_model):
    with Weights(sample_model, n_threads=1) as w, KVContext(w, 16, n_batch=4) as kv:
        buf = ffi.new("int32_t[]", 4)
        n = w.n_vocab
        assert lib.pq_ctx_bench_decode(ffi.NULL, n, 1, 0, 4, buf) == PQ_ERR_ARG
        assert lib.pq_ctx_bench_decode(kv._ptr, n, n, 0, 4, buf) == PQ_ERR_ARG     # token id
        assert lib.pq_ctx_bench_decode(kv._ptr, n, 1, -1, 4, buf) == PQ_ERR_ARG    # position
        assert lib.pq_ctx_bench_decode(kv._ptr, n, 1, 0, 4, ffi.NULL) == PQ_ERR_ARG
        assert lib.pq_ctx_bench_decode(kv._ptr, n, 1, 14, 4, buf) != 0             # past n_ctx


def _tiny_vocab(path, n_vocab):
    """A metadata-only GGUF shaped like llama.cpp's vocab files."""
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>" for i in range(n_vocab)])
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([1] * n_vocab)
    w.add_bos_token_id(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()


@pytest.mark.parametrize("qtype", ["q4_0", "q8_0"])
def test_random_model_has_real_shapes_and_sane_weights(tmp_path, qtype):
    hp = dict(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn=256, n_vocab=256, n_ctx=64,
              rope_base=10000.0)
    vocab = tmp_path / "vocab.gguf"
    _tiny_vocab(vocab, hp["n_vocab"])
    path = tmp_path / "rand.gguf"
    make_models.write_random(str(path), hp, qtype, str(vocab))

    r = gguf.GGUFReader(str(path))
    t = {x.name: x for x in r.tensors}
    want = gguf.GGMLQuantizationType[qtype.upper()]
    assert len(t) == 3 + 9 * hp["n_layers"]
    assert t["blk.1.attn_k.weight"].tensor_type == want
    assert list(t["blk.1.attn_k.weight"].shape) == [128, 64]     # (ne0, ne1): kv_dim rows
    assert list(t["blk.0.ffn_down.weight"].shape) == [256, 128]
    assert t["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert len(r.fields["tokenizer.ggml.tokens"].data) == hp["n_vocab"]
    w = gguf.quants.dequantize(t["blk.0.ffn_up.weight"].data, want)
    assert np.isfinite(w).all()
    assert 0.015 < w.std() < 0.025, w.std()   # the generator aims at std 0.02

    with Weights(str(path), n_threads=1) as wt, KVContext(wt, 32) as kv:
        logits = kv.eval([1, 2, 3], 0)
    assert logits.shape == (hp["n_vocab"],) and np.isfinite(logits).all()


@pytest.mark.slow
def test_requantized_sample_matches_source(sample_model, tmp_path):
    """Re-quantized to Q8_0, every weight stays within Q8_0's rounding of the source."""
    out = tmp_path / "q8.gguf"
    make_models.write_requantized(sample_model, str(out), "q8_0")
    src = {x.name: x for x in gguf.GGUFReader(sample_model).tensors}
    dst = {x.name: x for x in gguf.GGUFReader(str(out)).tensors}
    assert src.keys() == dst.keys()
    for name in ("blk.0.attn_q.weight", "blk.29.ffn_down.weight", "token_embd.weight"):
        a = gguf.quants.dequantize(src[name].data, src[name].tensor_type)
        b = gguf.quants.dequantize(dst[name].data, dst[name].tensor_type)
        assert dst[name].tensor_type == gguf.GGMLQuantizationType.Q8_0
        # Q8_0 step d is max|x|/127 per block of 32: rounding costs half a step,
        # storing d as fp16 (rel. error 2^-11) up to 127 * d * 2^-11 more: 0.5625 d.
        d = np.abs(a).reshape(-1, 32).max(axis=1, keepdims=True) / 127
        err = np.abs(a - b).reshape(-1, 32)
        assert (err <= 0.5625 * d + 1e-7).all(), name
    assert dst["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
