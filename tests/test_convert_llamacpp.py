"""Files we write open in llama.cpp (through llama-cpp-python, skipped when
it is not installed) and compute what transformers computes."""
import numpy as np
import pytest

import test_convert_helpers as H
from pyllama_q.convert import convert

llama_cpp = pytest.importorskip("llama_cpp")

TOKENS = [1, 450, 4996, 17354, 1701, 29916, 432]


def _llamacpp_logits(path, tokens):
    # F32 KV cache (the default F16 cache alone costs ~4e-4 relative)
    llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_batch=64, logits_all=True, verbose=False,
                          n_threads=1, type_k=0, type_v=0)
    llm.eval(tokens)
    return np.array(llm.scores[:len(tokens)], dtype=np.float64), llm


@pytest.mark.slow
@pytest.mark.parametrize("fam,layout", [("llama31", "hf"), ("llama2", "meta"), ("smollm", "hf")])
def test_llamacpp_opens_our_files_and_agrees(fam, layout, sample_model, tmp_path, monkeypatch):
    H.install_quant_fallback(monkeypatch)
    kind = H.FAMILIES[fam]["vocab"]
    md = H.vocab_md(kind, sample_model)
    w = H.random_weights(fam, H.n_vocab_of(kind, md), seed=7)
    if layout == "hf":
        d = H.write_hf(str(tmp_path / "m"), fam, w, md)
    else:
        d = H.write_meta(str(tmp_path / "m"), fam, w, md, n_shards=2)
    out = str(tmp_path / "f32.gguf")
    convert(d, out, "f32", name=fam)
    f = H.FAMILIES[fam]
    wr = dict(w, **({"output.weight": w["tok_embeddings.weight"]} if f.get("tied") else {}))
    ref = H.meta_forward(wr, f["n_heads"], f["n_kv_heads"], f["eps"], f["theta"], TOKENS,
                         rope_scaling=f.get("rope_scaling"))
    got, llm = _llamacpp_logits(out, TOKENS)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    print(f"\nllama.cpp on our {fam} ({layout}) F32 file: max rel diff vs reference {err:.2e}")
    assert err <= 1e-5   # measured ~3e-7 (llama.cpp computes in f32, own kernel order)
    # and the 4-bit file loads and stays close
    q = str(tmp_path / "q4_0.gguf")
    convert(d, q, "q4_0", name=fam)
    got_q, _ = _llamacpp_logits(q, TOKENS)
    assert np.isfinite(got_q).all()


@pytest.mark.slow
def test_llamacpp_tokenizes_like_the_original(sample_model, tmp_path, monkeypatch):
    """SmolLM2 exported and converted back: llama.cpp tokenizes text with our
    vocab exactly as with the original file."""
    H.install_quant_fallback(monkeypatch)
    d = str(tmp_path / "smol")
    H.export_hf_from_gguf(sample_model, d)
    out = str(tmp_path / "smol.gguf")
    convert(d, out, "q8_0")
    text = "Hello world! <|im_start|>user\n1234 naïve café – 東京 ✓<|im_end|>"
    a = llama_cpp.Llama(model_path=sample_model, vocab_only=True, verbose=False)
    b = llama_cpp.Llama(model_path=out, vocab_only=True, verbose=False)
    for special in (False, True):
        assert a.tokenize(text.encode(), add_bos=True, special=special) == \
            b.tokenize(text.encode(), add_bos=True, special=special)
