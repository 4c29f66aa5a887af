"""The C forward pass on tiny random-weight llama models written with the gguf
package's GGUFWriter, against a float64 numpy reference written here from the
paper's equations (independent of the C code).

Covered: F32/F16/Q8_0/Q4_0/Q4_1 weights, grouped-query attention, head_dim !=
dim/n_heads, partial RoPE, rope_freqs factors, tied and untied output; batch vs
token-by-token, n_batch chunking, thread counts, F16 vs F32 KV cache,
cancellation, concurrent sessions, and clean errors for bad files.
"""
import threading

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from pyllama_q.errors import (CancelledError, ContextFullError, FormatError,  # noqa: E402
                              UnsupportedError)
from pyllama_q.model import KVContext, Weights  # noqa: E402

Q = gguf.GGMLQuantizationType


# ---- building models -------------------------------------------------------

def _stored(a, qtype):
    """(what to write, the float64 values the file then holds)."""
    a = a.astype(np.float32)
    if qtype == Q.F32:
        return a, a.astype(np.float64)
    if qtype == Q.F16:
        h = a.astype(np.float16)
        return h, h.astype(np.float64)
    if qtype == Q.BF16:
        q = gguf.quants.quantize(a, qtype)
        return q, gguf.quants.dequantize(q, qtype).astype(np.float64).reshape(a.shape)
    q = gguf.quants.quantize(a, qtype)
    return q, gguf.quants.dequantize(q, qtype).astype(np.float64).reshape(a.shape)


def build_model(path, *, wtype=Q.F32, embd_type=None, dim=64, n_heads=4, n_kv=2,
                head_dim=None, ffn=96, n_layers=2, vocab=80, rope_dim=None, rope_base=10000.0,
                rope_freqs=False, tied=True, seed=0, drop=(), override=None, arch="llama",
                norm_type=Q.F32):
    """Write a random llama GGUF at `path`; return (weights as float64, hparams).

    Weights use numpy orientation (rows, cols) = GGUF (ne1, ne0)."""
    rng = np.random.default_rng(seed)
    hd = head_dim or dim // n_heads
    rd = rope_dim or hd
    hp = dict(dim=dim, n_heads=n_heads, n_kv=n_kv, hd=hd, ffn=ffn, n_layers=n_layers,
              vocab=vocab, rope_dim=rd, base=rope_base, eps=1e-5)
    raw = {"token_embd.weight": (rng.standard_normal((vocab, dim)), embd_type or wtype),
           "output_norm.weight": (1 + 0.1 * rng.standard_normal(dim), norm_type)}
    if not tied:
        raw["output.weight"] = (rng.standard_normal((vocab, dim)) / np.sqrt(dim), wtype)
    if rope_freqs:
        raw["rope_freqs.weight"] = (rng.uniform(1.0, 8.0, rd // 2), Q.F32)
    for i in range(n_layers):
        mats = {"attn_q": (n_heads * hd, dim), "attn_k": (n_kv * hd, dim),
                "attn_v": (n_kv * hd, dim), "attn_output": (dim, n_heads * hd),
                "ffn_gate": (ffn, dim), "ffn_up": (ffn, dim), "ffn_down": (dim, ffn)}
        for name, shape in mats.items():
            raw[f"blk.{i}.{name}.weight"] = (rng.standard_normal(shape) / np.sqrt(shape[1]),
                                             wtype)
        for name in ("attn_norm", "ffn_norm"):
            raw[f"blk.{i}.{name}.weight"] = (1 + 0.1 * rng.standard_normal(dim), norm_type)
    for name, a in (override or {}).items():
        raw[name] = a

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_context_length(256)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(hp["eps"])
    w.add_rope_freq_base(rope_base)
    if head_dim:
        w.add_key_length(hd)
        w.add_value_length(hd)
    if rope_dim:
        w.add_rope_dimension_count(rd)
    weights = {}
    for name, (a, qtype) in raw.items():
        if name in drop:
            continue
        data, weights[name] = _stored(a, qtype)
        w.add_tensor(name, data, raw_dtype=qtype if qtype not in (Q.F32, Q.F16) else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return weights, hp


# ---- the float64 reference -------------------------------------------------

def ref_forward(W, hp, tokens):
    """Logits (n, vocab) for tokens at positions 0..n-1, in float64."""
    n, H, KV, hd, rd = len(tokens), hp["n_heads"], hp["n_kv"], hp["hd"], hp["rope_dim"]

    def rms(x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + hp["eps"]) * g

    inv = hp["base"] ** (-np.arange(0, rd, 2) / rd)
    if "rope_freqs.weight" in W:
        inv = inv / W["rope_freqs.weight"]
    ang = np.arange(n)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(v):  # (n, heads, hd): rotate pairs (2i, 2i+1) of the first rd dims
        v = v.copy()
        x0, x1 = v[..., 0:rd:2].copy(), v[..., 1:rd:2].copy()
        v[..., 0:rd:2] = x0 * cos - x1 * sin
        v[..., 1:rd:2] = x0 * sin + x1 * cos
        return v

    x = W["token_embd.weight"][tokens]
    mask = np.triu(np.ones((n, n), dtype=bool), 1)
    for i in range(hp["n_layers"]):
        L = {k.split(".")[2]: v for k, v in W.items() if k.startswith(f"blk.{i}.")}
        h = rms(x, L["attn_norm"])
        q = rope((h @ L["attn_q"].T).reshape(n, H, hd))
        k = rope((h @ L["attn_k"].T).reshape(n, KV, hd))
        v = (h @ L["attn_v"].T).reshape(n, KV, hd)
        k, v = np.repeat(k, H // KV, axis=1), np.repeat(v, H // KV, axis=1)  # head h -> kv h//g
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
        s[:, mask] = -np.inf
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", p, v).reshape(n, H * hd) @ L["attn_output"].T
        h = rms(x, L["ffn_norm"])
        g, u = h @ L["ffn_gate"].T, h @ L["ffn_up"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ L["ffn_down"].T
    out = W.get("output.weight", W["token_embd.weight"])
    return rms(x, W["output_norm.weight"]) @ out.T


def assert_close(got, ref, atol, rtol, what=""):
    err = np.abs(got - ref)
    bound = atol + rtol * np.abs(ref)
    assert np.all(np.isfinite(got)), f"{what}: non-finite logits"
    assert np.all(err <= bound), (f"{what}: max |err| {err.max():.3g}, worst err/bound "
                                  f"{(err / bound).max():.3g}")


TOKENS = [3, 17, 42, 5, 79, 0, 23, 23, 61, 8, 14, 33]


# ---- against the reference -------------------------------------------------

# F32 weights and an F32 KV cache: the only differences from the float64
# reference are float32 rounding. Measured (tmp scalar kernels) max |err| /
# max |ref| = 1.9e-7 .. 4.0e-7 over these cases; the bound, 1e-5 of the
# largest logit, leaves room for SIMD summation order.
F32_CASES = {
    "gqa": dict(),
    "mha_untied": dict(n_kv=4, tied=False),
    "mqa_wide_heads_partial_rope": dict(n_kv=1, head_dim=32, rope_dim=16, rope_base=500.0),
    # k | q | v = 64 + 192 + 64 rows, 20 units of 16: two workers split at row
    # 160, half-way into query head 1, so each rotates part of a head (and the
    # second part lies partly past rope_dim)
    "split_inside_a_head": dict(n_heads=3, n_kv=1, head_dim=64, rope_dim=48),
    "rope_freqs": dict(rope_freqs=True, rope_base=100000.0),
    "f16_weights": dict(wtype=Q.F16),
    "bf16_weights_bf16_embd": dict(wtype=Q.BF16),
}


@pytest.mark.parametrize("case", sorted(F32_CASES))
def test_float_weights_match_reference(tmp_path, case):
    W, hp = build_model(tmp_path / "m.gguf", **F32_CASES[case])
    ref = ref_forward(W, hp, TOKENS)
    with Weights(tmp_path / "m.gguf", n_threads=2) as w, KVContext(w, 64, kv_type="f32") as c:
        got = c.eval(TOKENS, 0, all_logits=True)
        assert got.shape == (len(TOKENS), hp["vocab"]) and got.dtype == np.float32
        tol = 1e-5 * np.abs(ref).max()
        assert_close(got, ref, atol=tol, rtol=0, what=case)
        last = c.eval(TOKENS, 0)
        assert last.shape == (hp["vocab"],)
        assert_close(last, ref[-1], atol=tol, rtol=0, what=case + " last")


# Quantized weights: the reference uses the dequantized stored weights, so the
# remaining difference is the 8-bit quantization of activations (Q8_0 / Q8_1,
# as ggml does). Measured max |err| / max |ref| = 0.66% .. 1.24% on these
# models; bound 3%. The top token must agree wherever the reference margin is clear.
QUANT_CASES = {
    "q8_0": dict(wtype=Q.Q8_0),
    "q4_0": dict(wtype=Q.Q4_0),
    "q4_1": dict(wtype=Q.Q4_1),
    "q4_1_embd_q8_0_untied": dict(wtype=Q.Q4_1, embd_type=Q.Q8_0, tied=False),
    "q4_0_embd_f16": dict(wtype=Q.Q4_0, embd_type=Q.F16),
}


@pytest.mark.parametrize("case", sorted(QUANT_CASES))
def test_quantized_weights_match_reference(tmp_path, case):
    W, hp = build_model(tmp_path / "m.gguf", **QUANT_CASES[case])
    ref = ref_forward(W, hp, TOKENS)
    with Weights(tmp_path / "m.gguf", n_threads=2) as w, KVContext(w, 64, kv_type="f32") as c:
        got = c.eval(TOKENS, 0, all_logits=True)
    scale = np.abs(ref).max()
    assert_close(got, ref, atol=0.03 * scale, rtol=0, what=case)
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.1 * scale
    assert np.array_equal(got.argmax(1)[clear], ref.argmax(1)[clear]), case


# ---- consistency of the C side ---------------------------------------------

@pytest.fixture(scope="module")
def q4_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("q4") / "m.gguf"
    W, hp = build_model(path, wtype=Q.Q4_1, embd_type=Q.Q8_0, n_layers=3)
    return path, W, hp


def test_batch_equals_token_by_token(q4_model):
    path, _, hp = q4_model
    with Weights(path, n_threads=2) as w:
        with KVContext(w, 64, kv_type="f32") as c:
            batch = c.eval(TOKENS, 0, all_logits=True)
        with KVContext(w, 64, kv_type="f32") as c:
            one = np.stack([c.eval([t], i) for i, t in enumerate(TOKENS)])
        with KVContext(w, 64, n_batch=5, kv_type="f32") as c:  # chunks 5+5+2
            chunked = c.eval(TOKENS, 0, all_logits=True)
            chunked_last = c.eval(TOKENS, 0)
    scale = np.abs(batch).max()
    assert_close(one, batch, atol=1e-5 * scale, rtol=1e-5, what="token by token")
    assert_close(chunked, batch, atol=1e-5 * scale, rtol=1e-5, what="chunked")
    assert_close(chunked_last, batch[-1], atol=1e-5 * scale, rtol=1e-5, what="chunked last")


@pytest.mark.parametrize("share_kb", [None, "0"])
def test_thread_counts_agree(q4_model, monkeypatch, share_kb):
    """Work is split by rows, heads and blocks, never by partial sums, so the
    result does not depend on the number of workers (3 oversubscribes 2 cores).
    share_kb "0": every decode phase is handed out in pieces by a counter
    (forward.c rows_begin; by default only phases of >= 4 MiB per worker are,
    which this tiny model has none of), so who computes which rows changes
    from step to step; the logits must not."""
    if share_kb is not None:
        monkeypatch.setenv("PQ_DECODE_SHARE_KB", share_kb)
    path, _, _ = q4_model
    outs = []
    for nt in (1, 2, 3):
        with Weights(path, n_threads=nt) as w, KVContext(w, 64, kv_type="f32") as c:
            assert w.n_threads == nt
            outs.append(c.eval(TOKENS, 0, all_logits=True))
            outs.append(np.stack([c.eval([t], i) for i, t in enumerate(TOKENS[:8])]))
    for o in outs[2:]:
        assert np.array_equal(o, outs[0 if o.shape == outs[0].shape else 1])


def test_f16_kv_close_to_f32(tmp_path):
    # F32 weights, so that the only difference is the f16 rounding of K and V
    # (with quantized activations a tiny change can flip a rounding and grow).
    path = tmp_path / "m.gguf"
    build_model(path, n_layers=3)
    with Weights(path, n_threads=2) as w:
        with KVContext(w, 64, kv_type="f32") as c32, KVContext(w, 64, kv_type="f16") as c16:
            a = c32.eval(TOKENS, 0, all_logits=True)
            b = c16.eval(TOKENS, 0, all_logits=True)
            assert c16.kv_bytes * 2 == c32.kv_bytes
            assert c32.kv_bytes == 2 * 3 * 64 * 2 * 16 * 4  # K+V, layers, ctx, kv_dim, f32
    # f16 keeps 11 significant bits: measured max |diff| / max |logit| 1.7e-4.
    assert_close(b, a, atol=1e-3 * np.abs(a).max(), rtol=0, what="f16 kv")
    assert not np.array_equal(a, b)  # the f16 path really ran


def test_cancel_then_continue(q4_model):
    path, _, _ = q4_model
    with Weights(path, n_threads=2) as w, KVContext(w, 64) as c:
        want = c.eval(TOKENS, 0)
        c.eval(TOKENS[:6], 0)
        c.cancel()
        with pytest.raises(CancelledError):
            c.eval(TOKENS[6:], 6)
        # The flag is cleared and the cache before pos 6 is intact.
        got = c.eval(TOKENS[6:], 6)
        assert np.array_equal(got, want)


def test_cancel_from_another_thread(q4_model):
    path, _, _ = q4_model
    with Weights(path, n_threads=2) as w, KVContext(w, 64, n_batch=1) as c:
        stop = threading.Event()

        def canceller():
            while not stop.is_set():
                c.cancel()

        th = threading.Thread(target=canceller)
        th.start()
        try:
            with pytest.raises(CancelledError):
                for _ in range(10000):
                    c.eval(TOKENS, 0)
        finally:
            stop.set()
            th.join()
        # Clear a cancel that may have landed after the raising eval.
        try:
            c.eval(TOKENS[:1], 0)
        except CancelledError:
            pass
        np.testing.assert_array_equal(c.eval(TOKENS, 0), c.eval(TOKENS, 0))


def test_sessions_of_one_model_queue(q4_model):
    path, _, _ = q4_model
    with Weights(path, n_threads=2) as w:
        with KVContext(w, 64) as c:
            want = [c.eval(TOKENS[: 4 + i], 0) for i in range(4)]
        ctxs = [KVContext(w, 64) for _ in range(4)]
        got = [None] * 4

        def run(i):
            for _ in range(5):
                got[i] = ctxs[i].eval(TOKENS[: 4 + i], 0)

        ths = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        for i in range(4):
            np.testing.assert_array_equal(got[i], want[i])
    assert all(c._ptr is None for c in ctxs)  # closed with the Weights


def test_context_limits(q4_model):
    path, _, hp = q4_model
    with Weights(path, n_threads=1) as w, KVContext(w, 8) as c:
        c.eval(TOKENS[:8], 0)
        with pytest.raises(ContextFullError):
            c.eval([1], 8)
        with pytest.raises(ValueError, match="vocabulary"):
            c.eval([hp["vocab"]], 0)
    with pytest.raises(ValueError, match="closed"):
        c.eval([1], 0)


# ---- bad files -------------------------------------------------------------

def test_missing_tensor(tmp_path):
    build_model(tmp_path / "m.gguf", drop=("blk.1.ffn_up.weight",))
    with pytest.raises(FormatError, match=r"missing tensor 'blk\.1\.ffn_up\.weight'"):
        Weights(tmp_path / "m.gguf", n_threads=1)


def test_wrong_shape(tmp_path):
    bad = {"blk.0.attn_k.weight": (np.zeros((48, 64)), Q.F32)}  # kv_dim is 32
    build_model(tmp_path / "m.gguf", override=bad)
    with pytest.raises(FormatError, match=r"blk\.0\.attn_k\.weight.*shape \(64, 48\).*"
                                          r"expected \(64, 32\)"):
        Weights(tmp_path / "m.gguf", n_threads=1)


def test_unsupported_type(tmp_path):
    bad = {"blk.1.attn_q.weight": (np.zeros((64, 64)), Q.Q5_0)}
    build_model(tmp_path / "m.gguf", override=bad)
    with pytest.raises(UnsupportedError, match=r"blk\.1\.attn_q\.weight.*Q5_0"):
        Weights(tmp_path / "m.gguf", n_threads=1)


def test_norm_must_be_f32(tmp_path):
    build_model(tmp_path / "m.gguf", norm_type=Q.F16)
    with pytest.raises(UnsupportedError, match="norm.*F32"):
        Weights(tmp_path / "m.gguf", n_threads=1)


def test_other_architecture(tmp_path):
    build_model(tmp_path / "m.gguf", arch="gpt2")
    with pytest.raises(UnsupportedError, match="architecture 'gpt2'"):
        Weights(tmp_path / "m.gguf", n_threads=1)


def test_default_threads_is_physical_cores(q4_model):
    path, _, _ = q4_model
    with Weights(path) as w:
        assert 1 <= w.n_threads <= __import__("os").cpu_count()


def test_idle_pool_sleeps(q4_model):
    """After an evaluation the workers spin briefly, then block: an idle model
    must not burn CPU (process CPU time over a 0.5 s wait stays small)."""
    import time

    path, _, _ = q4_model
    with Weights(path, n_threads=2) as w, KVContext(w, 64) as c:
        c.eval(TOKENS, 0)
        time.sleep(0.2)  # let the post-job spin run out
        t0 = time.process_time()
        time.sleep(0.5)
        busy = time.process_time() - t0
        c.eval(TOKENS, 0)  # and they wake up again
    assert busy < 0.05, f"idle pool used {busy:.3f} s of CPU in 0.5 s"


def test_every_kernel_variant(q4_model, tmp_path):
    """The forward pass through each kernel table this CPU can run agrees with
    the scalar table. Measured max |diff| / max |logit|: 3e-7 (F32 model) and
    1.8e-7 (Q4_1 model: the activation quantizers are bit-exact, only float
    summation order differs). Bounds 1e-5 and 1e-4 (a rare rounding flip of
    one activation is allowed for)."""
    from pyllama_q._pq import ffi, lib

    f32_path = tmp_path / "f32.gguf"
    build_model(f32_path, n_layers=2)
    active = ffi.string(lib.pq_kernels_active())
    variants = ffi.string(lib.pq_kernels_available()).decode().split()
    results = {}
    try:
        for v in variants:
            assert lib.pq_kernels_select(v.encode()) == 0
            for name, path in (("f32", f32_path), ("q4_1", q4_model[0])):
                with Weights(path, n_threads=2) as w, KVContext(w, 64, kv_type="f32") as c:
                    results[v, name] = (c.eval(TOKENS, 0, all_logits=True),
                                        np.stack([c.eval([t], i) for i, t in enumerate(TOKENS)]))
    finally:
        lib.pq_kernels_select(active)
    for v in variants:
        for name, rel in (("f32", 1e-5), ("q4_1", 1e-4)):
            for got, ref in zip(results[v, name], results["scalar", name]):
                assert_close(got, ref, atol=rel * np.abs(ref).max(), rtol=0, what=f"{v} {name}")
