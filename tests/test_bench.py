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


def _worker_result(engine, pp_s, tg_s, load=0.5, rss=100.0):
    return {"engine": engine, "threads": 2, "load_s": load, "first_eval_s": 0.1,
            "peak_rss_mb": rss, "pp_s": pp_s, "pp_cpu_share": [1.0] * len(pp_s),
            "tg_s": tg_s, "tg_cpu_share": [1.0] * len(tg_s)}


def test_compare_rounds_ratio_is_median_of_per_round_ratios():
    """The machine drifts between rounds: per round pq is 3.0x, 1.5x and 2.5x
    its peer (median 2.5), while the pooled medians of all runs would give
    1.5. The reported ratio must be the per-round median."""
    from benchmarks import compare

    def rnd(pq_s, ll_s, pq_load=0.5, ll_rss=200.0):
        return {"pq": _worker_result("pq", [pq_s, pq_s], [pq_s, pq_s], load=pq_load),
                "llama.cpp": _worker_result("llama.cpp", [ll_s, ll_s], [ll_s, ll_s], rss=ll_rss)}

    # wbytes 1e9 and tg 10: a 1 s tg run is 10 t/s, 10 GB/s of weights
    row = {"model": "m", "threads": 2, "pp": 100, "tg": 10, "reps": 2, "wbytes": 1e9,
           "rounds": [rnd(1.0, 3.0), rnd(2.0, 3.0, pq_load=0.7, ll_rss=210.0), rnd(2.0, 5.0)],
           "bw_rounds": [(20.0, 19.0), (10.0, 9.0), (10.0, 9.0)]}
    assert compare.round_ratios(row, "tg_s", 10) == pytest.approx([3.0, 1.5, 2.5])
    assert compare.round_ratios(row, "pp_s", 100) == pytest.approx([3.0, 1.5, 2.5])
    # pq: 10 t/s at 20 GB/s, then 5 t/s at 10 GB/s twice: 50 % every round
    assert compare.roofline_pct(row, "pq") == pytest.approx(50.0)
    # llama.cpp: 10/3 t/s at 20 GB/s (16.7 %), 10/3 at 10 (33.3 %), 2 at 10 (20 %)
    assert compare.roofline_pct(row, "llama.cpp") == pytest.approx(20.0)

    merged = compare.merge_rounds([r["llama.cpp"] for r in row["rounds"]])
    assert merged["tg_s"] == [3.0, 3.0, 3.0, 3.0, 5.0, 5.0]
    assert merged["peak_rss_mb"] == 210.0 and merged["rounds"] == 3
    row["by_engine"] = {e: compare.merge_rounds([r[e] for r in row["rounds"]])
                        for e in ("pq", "llama.cpp")}
    text = compare.report({"date": "d", "cpu": "c", "n_cpus": 2, "loadavg": "0", "commit": "x",
                           "command": "c", "wall_s": 1.0}, [row], {2: (20.0, 19.0)})
    ratio_line = next(line for line in text.splitlines() if "**pq / llama.cpp**" in line)
    cells = [c.strip() for c in ratio_line.split("|")]
    # load (medians 0.5 / 0.5), peak RSS (100 / 210), then pp and tg from the rounds
    assert cells[5:9] == ["1.00", "0.48", "2.50", "2.50"]
    assert "tg 3.00, 1.50, 2.50" in text


def test_compare_merge_keeps_a_failed_round():
    from benchmarks import compare

    ok = _worker_result("pq", [1.0], [1.0])
    bad = {"engine": "pq", "threads": 2, "error": "timed out after 600 s"}
    assert compare.merge_rounds([ok, bad])["error"] == "timed out after 600 s"


def test_roofline_holds_each_decode_against_its_neighbouring_read_tests():
    """Each decode is compared with the read tests right around it, not with a
    run-wide figure: here the bandwidth halves mid-run and both engines keep
    pace with it, so every % stays put while a run-wide mean would not."""
    from benchmarks import roofline

    wbytes, tokens = 1e9, 10          # 10 GB per decode
    samples = [{"read": 40.0},
               {"engine": "pq", "pair": 0, "s": 10 / 36}, {"read": 40.0},        # 36 GB/s: 90 %
               {"engine": "llama.cpp", "pair": 0, "s": 10 / 30}, {"read": 20.0},  # mean 30: 100 %?
               {"engine": "llama.cpp", "pair": 1, "s": 10 / 16}, {"read": 20.0},  # 80 %
               {"engine": "pq", "pair": 1, "s": 10 / 18}, {"read": 20.0}]        # 90 %
    s = roofline.summarize(samples, wbytes, tokens, ["pq", "llama.cpp"])
    assert s["pct"]["pq"] == pytest.approx([90.0, 90.0])
    # pair 0's llama.cpp decode sat between 40 and 20 GB/s tests: held against 30
    assert s["pct"]["llama.cpp"] == pytest.approx([100.0, 80.0])
    assert s["ratio"] == pytest.approx([0.9, 90 / 80])
    assert s["ceiling"] == pytest.approx([1.0, 1.25])
    # one engine alone: its % only, no ratios
    alone = roofline.summarize([x for x in samples if x.get("engine") != "llama.cpp"],
                               wbytes, tokens, ["pq"])
    assert alone["pct"]["pq"] == pytest.approx([90.0, 90.0]) and alone["ratio"] == []

