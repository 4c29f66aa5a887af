"""The sample model (SmolLM2-135M-Instruct) through the converter: exported
to the Hugging Face layout by test code, converted back, compared with the
original and with transformers; quantized files measured against
transformers and against llama.cpp's quantizer on the same weights."""
import os

import numpy as np
import pytest

import test_convert_helpers as H
from pyllama_q.convert import ConvertError, convert

TEXT = ("The quick brown fox jumps over the lazy dog. In 1905, Albert Einstein published four papers "
        "that changed physics: on the photoelectric effect, Brownian motion, special relativity and "
        "the equivalence of mass and energy.")


@pytest.fixture(scope="module")
def smol(sample_model, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("smol") / "SmolLM2-135M-Instruct")
    orig = H.export_hf_from_gguf(sample_model, d)
    from tokenizers import Tokenizer

    toks = Tokenizer.from_file(os.path.join(d, "tokenizer.json")).encode(TEXT).ids[:48]
    ref = H.hf_logits(d, toks)
    return d, orig, toks, ref


@pytest.mark.slow
def test_roundtrip_f32_equals_original(smol, sample_model, tmp_path):
    d, orig, toks, ref = smol
    out = str(tmp_path / "f32.gguf")
    convert(d, out, "f32", name="SmolLM2-135M-Instruct")
    got = H.gguf_tensors(out)
    assert set(got) == set(orig)
    for n in orig:
        np.testing.assert_array_equal(got[n], orig[n], err_msg=n)
    a, b = H.gguf_fields(sample_model), H.gguf_fields(out)
    for k in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
              "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
              "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template",
              "llama.block_count", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
              "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
              "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size", "llama.rope.dimension_count"):
        va, vb = a[k], b[k]
        if isinstance(va, np.ndarray):
            np.testing.assert_array_equal(va, vb, err_msg=k)
        else:
            assert va == vb, k
    np.testing.assert_array_equal(a["tokenizer.ggml.token_type"], b["tokenizer.ggml.token_type"])
    for who, ours in (("runtime", H.runtime_logits(out, toks)), ("numpy", H.gguf_forward(out, toks))):
        err = np.abs(ours - ref).max() / np.abs(ref).max()
        print(f"\nSmolLM2 F32 round trip ({who}): max|ours - transformers| / max|ref| = {err:.2e}")
        assert err <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_quantized_quality_vs_transformers_and_llamacpp(smol, qtype, tmp_path, monkeypatch):
    import gguf

    H.install_quant_fallback(monkeypatch)
    d, orig, toks, ref = smol
    out = str(tmp_path / f"{qtype}.gguf")
    rows = convert(d, out, qtype, threads=2)
    # weights-only comparison (float64 forward on the dequantized files) for
    # the quantizer itself; the runtime's figure adds its 8-bit activations
    kl, top1 = H.kl_top1(ref, H.gguf_forward(out, toks))
    rkl, rtop1 = H.kl_top1(ref, H.runtime_logits(out, toks))

    # peer 1: ggml's reference encoders (gguf.quants is bit-exact with them,
    # and llama.cpp's quantizer uses them for these types), with the type
    # choice llama_model_quantize makes here: the tied embedding (= output) Q8_0
    qt = gguf.GGMLQuantizationType[qtype.upper()]
    tq = {n: (gguf.GGMLQuantizationType.Q8_0 if n == "token_embd.weight" else qt) for n in orig}
    w = {n: (gguf.quants.dequantize(gguf.quants.quantize(x, tq[n]), tq[n]) if x.ndim == 2 else x)
         for n, x in orig.items()}
    fl = H.gguf_fields(out)
    peers = {"gguf.quants": H.kl_top1(ref, H.meta_forward(
        H.gguf_to_meta(w, True), 9, 3, float(fl["llama.attention.layer_norm_rms_epsilon"]),
        float(fl["llama.rope.freq_base"]), toks))}
    # peer 2: llama.cpp's own quantizer, when llama-cpp-python is installed
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
    if llama_cpp is not None:
        f32 = str(tmp_path / "f32.gguf")
        convert(d, f32, "f32")
        peer = str(tmp_path / "peer.gguf")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = {"q8_0": 7, "q4_0": 2}[qtype]
        assert llama_cpp.llama_model_quantize(f32.encode(), peer.encode(), params) == 0
        peers["llama_model_quantize"] = H.kl_top1(ref, H.gguf_forward(peer, toks))
    worst = max(r[3] for r in rows)
    print(f"\nSmolLM2 {qtype} ({len(toks)} tokens, worst tensor rel RMS {worst:.3e}): "
          f"ours KL={kl:.5f} top1={top1:.3f} (runtime KL={rkl:.5f} top1={rtop1:.3f}) | "
          + " | ".join(f"{k} KL={v[0]:.5f} top1={v[1]:.3f}" for k, v in peers.items()))
    # quality floors; measured once: q8_0 KL 0.0019 top1 0.978, q4_0 KL 0.508 top1 0.739
    # (the source weights are already Q4_1, so 4-bit re-quantization compounds)
    limit = {"q8_0": (0.01, 0.9), "q4_0": (0.8, 0.6)}[qtype]
    assert kl <= limit[0] and top1 >= limit[1]
    assert rkl <= 1.5 * limit[0] and rtop1 >= limit[1] - 0.1
    for pkl, ptop1 in peers.values():
        assert kl <= pkl * (1 + 1e-3) + 1e-6 and top1 >= ptop1 - 1e-9


@pytest.mark.slow
def test_requantize_the_sample_gguf(sample_model, tmp_path):
    """The sample is Q4_1 (+ Q8_0 embedding): refused without
    --allow-requantize; with it, every 2-D tensor is ggml's Q8_0 of the
    original's dequantized values and the metadata is carried over."""
    import gguf

    out = str(tmp_path / "q8.gguf")
    with pytest.raises(ConvertError, match="already quantized"):
        convert(sample_model, out, "q8_0")
    assert os.listdir(tmp_path) == []
    convert(sample_model, out, "q8_0", allow_requantize=True, name="requantized")
    src, got = H.gguf_tensors(sample_model), H.gguf_tensors(out)
    q8 = gguf.GGMLQuantizationType.Q8_0
    for n in ("blk.0.attn_q.weight", "blk.29.ffn_down.weight", "token_embd.weight"):
        np.testing.assert_array_equal(got[n], gguf.quants.dequantize(gguf.quants.quantize(src[n], q8), q8))
    np.testing.assert_array_equal(got["blk.3.attn_norm.weight"], src["blk.3.attn_norm.weight"])
    a, b = H.gguf_fields(sample_model), H.gguf_fields(out)
    assert b["general.name"] == "requantized" and b["general.file_type"] == 7
    assert a["tokenizer.ggml.merges"] == b["tokenizer.ggml.merges"]
    assert a["tokenizer.chat_template"] == b["tokenizer.chat_template"]
