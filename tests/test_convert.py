"""Converter end to end on tiny random checkpoints with real tokenizers:
every family in the Hugging Face and Meta layouts, F32 output whose logits
match independent references (transformers for HF; a numpy port of Meta's
model.py for Meta, itself checked against transformers once). "Our" logits
are the pyllama-q runtime's (pyllama_q.model) on the written file."""
import os

import numpy as np
import pytest

import test_convert_helpers as H
from pyllama_q.convert import ConvertError, convert, main

TOKENS = [1, 450, 4996, 17354, 1701, 29916, 432]
RTOL = 1e-5   # float32 model vs float64 reference: measured ~4e-7 relative


def _close(ours, ref):
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err <= RTOL, f"max |ours-ref| / max|ref| = {err:.2e}"


@pytest.fixture(scope="module")
def md_cache(sample_model):
    cache = {}

    def get(kind):
        base = "spm" if kind.startswith("spm") and kind != "spm-infill" else kind
        if kind == "spm-pad":
            base = "spm"
        if base not in cache:
            cache[base] = H.vocab_md(base, sample_model)
        return cache[base]

    return get


def _family_setup(fam, md_cache):
    kind = H.FAMILIES[fam]["vocab"]
    md = md_cache(kind)
    n_vocab = H.n_vocab_of(kind, md)
    return kind, md, H.random_weights(fam, n_vocab, seed=sum(map(ord, fam)))


HF_FAMILIES = ["llama1", "llama2", "codellama", "llama3", "llama31", "alpaca", "smollm", "tinyllama"]
META_FAMILIES = ["llama1", "llama2", "codellama", "llama3", "llama31"]


@pytest.mark.slow
@pytest.mark.parametrize("fam", HF_FAMILIES)
def test_hf_layout_f32_logits_match_transformers(fam, md_cache, tmp_path):
    kind, md, w = _family_setup(fam, md_cache)
    d = H.write_hf(str(tmp_path / fam), fam, w, md)
    out = str(tmp_path / "out.gguf")
    rows = convert(d, out, "f32", name=fam, threads=2)
    assert all(r[3] == 0.0 for r in rows)
    ref = H.hf_logits(d, TOKENS)
    _close(H.runtime_logits(out, TOKENS), ref)

    fl = H.gguf_fields(out)
    f = H.FAMILIES[fam]
    assert fl["general.architecture"] == "llama" and fl["general.name"] == fam
    assert fl["llama.attention.head_count_kv"] == f["n_kv_heads"]
    assert fl["llama.rope.freq_base"] == np.float32(f["theta"])
    assert fl["llama.vocab_size"] == w["tok_embeddings.weight"].shape[0]
    assert len(fl["tokenizer.ggml.tokens"]) == w["tok_embeddings.weight"].shape[0]
    if kind == "spm-pad":
        assert fl["tokenizer.ggml.tokens"][-1] == "[PAD]" and fl["tokenizer.ggml.padding_token_id"] == 32000
    if kind == "spm-infill":
        assert fl["tokenizer.ggml.tokens"][32007] == "▁<PRE>" and fl["tokenizer.ggml.eot_token_id"] == 32010
    if kind == "llama3":
        assert fl["tokenizer.ggml.pre"] == "llama-bpe" and fl["tokenizer.ggml.model"] == "gpt2"
        assert fl["tokenizer.ggml.eot_token_id"] == 128009
    if kind == "smollm":
        assert fl["tokenizer.ggml.pre"] == "smollm" and "output.weight" not in H.gguf_tensors(out)
        assert fl["tokenizer.chat_template"] == md["tokenizer.chat_template"]
    if f.get("rope_scaling"):
        rf = H.gguf_tensors(out)["rope_freqs.weight"]
        hd = H.DIM // f["n_heads"]
        freqs = 1.0 / f["theta"] ** (np.arange(0, hd, 2) / hd)
        want = freqs / H.rope_factors(hd, f["theta"], f["rope_scaling"])
        np.testing.assert_allclose(rf, want, rtol=1e-5)
        assert rf.max() == 8.0 and rf.min() == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("fam", META_FAMILIES)
def test_meta_layout_f32_logits_match_reference_sharded_identical(fam, md_cache, tmp_path):
    kind, md, w = _family_setup(fam, md_cache)
    f = H.FAMILIES[fam]
    outs = []
    for n in (1, 2):
        d = H.write_meta(str(tmp_path / f"{fam}{n}"), fam, w, md, n_shards=n)
        out = str(tmp_path / f"out{n}.gguf")
        convert(d, out, "f32", name=fam, threads=2)
        outs.append(out)
    with open(outs[0], "rb") as a, open(outs[1], "rb") as b:
        assert a.read() == b.read(), "1-shard and 2-shard conversions differ"
    ref = H.meta_forward(w, f["n_heads"], f["n_kv_heads"], f["eps"], f["theta"], TOKENS,
                         rope_scaling=f.get("rope_scaling"))
    _close(H.runtime_logits(outs[0], TOKENS), ref)
    _close(H.gguf_forward(outs[0], TOKENS), ref)   # the file read by the oracle, too
    fl = H.gguf_fields(outs[0])
    ctx = {"llama1": 2048, "llama2": 4096, "codellama": 16384, "llama3": 8192, "llama31": 131072}[fam]
    assert fl["llama.context_length"] == ctx
    if fam == "llama3":
        assert fl["tokenizer.ggml.tokens"] == list(md["tokenizer.ggml.tokens"])
    if fam == "llama31":   # 3.1 renamed some reserved tokens (Meta's tokenizer.py)
        assert fl["tokenizer.ggml.tokens"][:128000] == list(md["tokenizer.ggml.tokens"])[:128000]
        assert fl["tokenizer.ggml.tokens"][128004] == "<|finetune_right_pad_id|>"
        assert fl["tokenizer.ggml.eom_token_id"] == 128008
    if kind == "llama3":
        assert fl["tokenizer.ggml.merges"] == list(md["tokenizer.ggml.merges"])
        assert fl["tokenizer.ggml.bos_token_id"] == 128000 and fl["tokenizer.ggml.eot_token_id"] == 128009


@pytest.mark.slow
def test_meta_reference_matches_transformers(md_cache, tmp_path):
    """The numpy Meta reference is itself right: same logits as transformers
    on the HF export of the same weights (GQA + LLaMA 3.1 rope scaling)."""
    fam = "llama31"
    _, md, w = _family_setup(fam, md_cache)
    f = H.FAMILIES[fam]
    d = H.write_hf(str(tmp_path / "hf"), fam, w, md)
    ref = H.meta_forward(w, f["n_heads"], f["n_kv_heads"], f["eps"], f["theta"], TOKENS,
                         rope_scaling=f["rope_scaling"])
    _close(ref, H.hf_logits(d, TOKENS))


@pytest.mark.slow
def test_hf_sharded_matches_single_and_layout_per_gguf_oracle(md_cache, tmp_path):
    """Sharded safetensors give the same bytes; gguf.GGUFReader sees llama.cpp's
    names, reversed dims, 32-byte alignment, and values equal to the source
    after the q/k permutation."""
    import gguf

    fam = "llama2"
    _, md, w = _family_setup(fam, md_cache)
    outs = []
    for n in (1, 3):
        d = H.write_hf(str(tmp_path / f"hf{n}"), fam, w, md, n_shards=n)
        outs.append(str(tmp_path / f"o{n}.gguf"))
        convert(d, outs[-1], "f32", name="x", threads=1)
    with open(outs[0], "rb") as a, open(outs[1], "rb") as b:
        assert a.read() == b.read()
    r = gguf.GGUFReader(outs[0])
    assert r.fields["general.alignment"].contents() == 32
    assert r.fields["general.quantization_version"].contents() == 2
    assert r.fields["general.file_type"].contents() == 0
    names = [t.name for t in r.tensors]
    assert names[0] == "token_embd.weight" and names[-2:] == ["output_norm.weight", "output.weight"]
    hf = H.to_hf(w, fam)
    t = {x.name: x for x in r.tensors}
    q = t["blk.1.attn_q.weight"]
    assert list(q.shape) == [64, 64] and q.data_offset % 32 == 0
    np.testing.assert_array_equal(np.asarray(q.data).reshape(64, 64), w["layers.1.attention.wq.weight"])
    k = t["blk.0.attn_k.weight"]
    assert list(k.shape) == [64, 32]
    np.testing.assert_array_equal(np.asarray(k.data).reshape(32, 64),
                                  hf["model.layers.0.self_attn.k_proj.weight"][H.qk_perm(32, 2)])
    assert t["blk.0.ffn_down.weight"].shape.tolist() == [96, 64]


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1", "f16"])
def test_quantized_types_and_error_report(qtype, md_cache, tmp_path, monkeypatch):
    """2-D weights take the type (bit-exact with gguf.quants, ggml's reference
    encoders), 1-D stay F32, and the reported relative RMS error is the real one."""
    import gguf

    H.install_quant_fallback(monkeypatch)
    fam = "llama2"
    _, md, w = _family_setup(fam, md_cache)
    d = H.write_hf(str(tmp_path / "hf"), fam, w, md)
    ref_f32 = str(tmp_path / "f32.gguf")
    convert(d, ref_f32, "f32", name="x")
    out = str(tmp_path / "q.gguf")
    rows = convert(d, out, qtype, name="x", threads=2)
    full = H.gguf_tensors(ref_f32)
    r = gguf.GGUFReader(out)
    qt = gguf.GGMLQuantizationType[qtype.upper()]
    for t in r.tensors:
        x = full[t.name]
        if x.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            continue
        tq = qt
        if t.name == "output.weight" and qtype in ("q4_0", "q4_1"):
            tq = gguf.GGMLQuantizationType.Q8_0   # the output projection stays 8-bit
        assert t.tensor_type == tq, t.name
        want = gguf.quants.quantize(x, tq)
        np.testing.assert_array_equal(np.asarray(t.data).reshape(want.shape), want, err_msg=t.name)
    limits = {"q8_0": 0.01, "q4_0": 0.15, "q4_1": 0.12, "f16": 1e-3}   # named thresholds
    got = H.gguf_tensors(out)
    for name, tname, shape, rel in rows:
        x = full[name]
        true_rel = np.sqrt(((got[name] - x) ** 2).sum() / (x ** 2).sum())
        assert abs(rel - true_rel) <= 1e-3 * true_rel + 1e-12, name
        assert rel <= limits[qtype if name != "output.weight" else "q8_0"], (name, rel)
    assert H.gguf_fields(out)["general.file_type"] == {"q8_0": 7, "q4_0": 2, "q4_1": 3, "f16": 1}[qtype]
    # --pure: the output projection takes the type too
    pure = str(tmp_path / "pure.gguf")
    convert(d, pure, qtype, name="x", pure=True)
    assert {t.tensor_type for t in gguf.GGUFReader(pure).tensors if len(t.shape) == 2} == {qt}


@pytest.mark.slow
def test_gguf_input_requantize_and_refusal(md_cache, tmp_path, monkeypatch):
    H.install_quant_fallback(monkeypatch)
    fam = "tinyllama"
    _, md, w = _family_setup(fam, md_cache)
    d = H.write_hf(str(tmp_path / "hf"), fam, w, md)
    f16 = str(tmp_path / "f16.gguf")
    convert(d, f16, "f16", name="x")
    # F16 GGUF -> Q8_0 equals HF -> F16 -> Q8_0 done by the oracle
    q8 = str(tmp_path / "q8.gguf")
    convert(f16, q8, "q8_0")
    a, b = H.gguf_tensors(f16), H.gguf_tensors(q8)
    import gguf

    for n in a:
        if a[n].ndim == 2:
            want = gguf.quants.dequantize(gguf.quants.quantize(a[n], gguf.GGMLQuantizationType.Q8_0),
                                          gguf.GGMLQuantizationType.Q8_0)
            np.testing.assert_array_equal(b[n], want, err_msg=n)
    fa, fb = H.gguf_fields(f16), H.gguf_fields(q8)
    assert fb["general.file_type"] == 7 and fa["tokenizer.ggml.tokens"] == fb["tokenizer.ggml.tokens"]
    # already quantized: refused unless asked
    q4 = str(tmp_path / "q4.gguf")
    with pytest.raises(ConvertError, match="already quantized.*--allow-requantize"):
        convert(q8, q4, "q4_0")
    assert not os.path.exists(q4)
    convert(q8, q4, "q4_0", allow_requantize=True)
    assert H.gguf_fields(q4)["general.file_type"] == 2
    # never overwrites the input
    with pytest.raises(ConvertError, match="overwrite"):
        convert(q8, q8, "q4_0", allow_requantize=True)


def test_cli_errors_are_one_line(tmp_path, capsys):
    rc = main([str(tmp_path / "nope"), str(tmp_path / "o.gguf")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "nope" in err
    assert os.listdir(tmp_path) == []


def test_c_kernels_encode_bit_exact_with_ggml_reference():
    """The shipped path: lib.pq_quantize (no fallback) equals gguf.quants,
    which is bit-exact with ggml's reference encoders."""
    import gguf

    from pyllama_q.convert import quantize

    assert quantize.FALLBACK is None
    x = np.random.default_rng(3).standard_normal((7, 96)).astype(np.float32)
    x[2] = 0.0
    for t in (2, 3, 8):
        got = quantize.quantize_rows(t, x, "test")
        want = gguf.quants.quantize(x, gguf.GGMLQuantizationType(t))
        np.testing.assert_array_equal(got, np.asarray(want).ravel(), err_msg=str(t))
        back = quantize.dequantize_rows(t, got, 7, 96, "test")
        np.testing.assert_array_equal(back, gguf.quants.dequantize(want, gguf.GGMLQuantizationType(t)))
