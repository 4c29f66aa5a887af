"""Helpers for the converter tests (no tests here): tiny random checkpoints
with real tokenizers in both layouts, an independent numpy LLaMA forward in
Meta's conventions, and readers of written GGUF files through the `gguf`
package (the oracle).

Tokenizer files come from tests/vocabs.py (the tokenizer helper's module,
rebuilding SentencePiece / tokenizer.json / tiktoken files from llama.cpp's
vocab-only GGUFs); tests that need it skip while it is absent.
"""
import json
import os

import numpy as np
import pytest

# ---- families ---------------------------------------------------------------------

# Tiny dims (dim 64, head_dim 16) with each family's distinguishing traits;
# rows are multiples of 32 so every type applies.
FAMILIES = {
    "llama1": dict(vocab="spm", n_heads=4, n_kv_heads=4, eps=1e-6, theta=1e4),
    "llama2": dict(vocab="spm", n_heads=4, n_kv_heads=2, eps=1e-5, theta=1e4),
    "codellama": dict(vocab="spm-infill", n_heads=4, n_kv_heads=4, eps=1e-5, theta=1e6),
    "llama3": dict(vocab="llama3", n_heads=4, n_kv_heads=2, eps=1e-5, theta=5e5),
    "llama31": dict(vocab="llama3", n_heads=4, n_kv_heads=2, eps=1e-5, theta=5e5,
                    rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position_embeddings=8192)),
    "alpaca": dict(vocab="spm-pad", n_heads=4, n_kv_heads=4, eps=1e-6, theta=1e4),
    "smollm": dict(vocab="smollm", n_heads=4, n_kv_heads=2, eps=1e-5, theta=1e5, tied=True),
    "tinyllama": dict(vocab="spm", n_heads=4, n_kv_heads=2, eps=1e-5, theta=1e4),
}
DIM, N_LAYERS, FFN = 64, 2, 96


def vocabs_module():
    try:
        import vocabs
    except ImportError:
        pytest.skip("tests/vocabs.py (tokenizer fixtures) not merged yet")
    return vocabs


def vocab_md(kind, sample_model=None):
    """GGUF tokenizer metadata for a vocab kind (read with tests/vocabs.py)."""
    vocabs = vocabs_module()
    if kind == "smollm":
        return vocabs.read_metadata(sample_model)
    name = "llama-bpe" if kind == "llama3" else "llama-spm"
    try:
        md = dict(vocabs.read_metadata(vocabs.vocab_path(name)))
    except Exception as e:  # no sdist reachable
        pytest.skip(f"llama.cpp vocab {name} unavailable: {e}")
    if kind == "spm-infill":
        # Code LLaMA: 16 more pieces, the infill ones at 32007..32010
        extra = [f"<unused{i}>" for i in range(16)]
        extra[7:11] = ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]
        md["tokenizer.ggml.tokens"] = list(md["tokenizer.ggml.tokens"]) + extra
        md["tokenizer.ggml.scores"] = np.concatenate([md["tokenizer.ggml.scores"], np.zeros(16, np.float32)])
        md["tokenizer.ggml.token_type"] = np.concatenate([md["tokenizer.ggml.token_type"],
                                                          np.full(16, 4, np.int32)])
    return md


def n_vocab_of(kind, md):
    n = len(md["tokenizer.ggml.tokens"])
    return n + 1 if kind == "spm-pad" else n


def random_weights(fam, n_vocab, seed=0):
    """Meta-named float32 weights (q/k rows interleaved, as Meta stores them)."""
    f = FAMILIES[fam]
    rng = np.random.default_rng(seed)
    hd = DIM // f["n_heads"]
    lin = lambda o, i: (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)  # noqa: E731
    norm = lambda: (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32)  # noqa: E731
    w = {"tok_embeddings.weight": rng.standard_normal((n_vocab, DIM)).astype(np.float32),
         "norm.weight": norm()}
    if not f.get("tied"):
        w["output.weight"] = lin(n_vocab, DIM)
    for i in range(N_LAYERS):
        p = f"layers.{i}."
        w[p + "attention_norm.weight"] = norm()
        w[p + "attention.wq.weight"] = lin(f["n_heads"] * hd, DIM)
        w[p + "attention.wk.weight"] = lin(f["n_kv_heads"] * hd, DIM)
        w[p + "attention.wv.weight"] = lin(f["n_kv_heads"] * hd, DIM)
        w[p + "attention.wo.weight"] = lin(DIM, f["n_heads"] * hd)
        w[p + "ffn_norm.weight"] = norm()
        w[p + "feed_forward.w1.weight"] = lin(FFN, DIM)
        w[p + "feed_forward.w3.weight"] = lin(FFN, DIM)
        w[p + "feed_forward.w2.weight"] = lin(DIM, FFN)
    return w


def qk_perm(n_rows, n_head):
    """GGUF row i <- HF row perm[i] (written here independently of convert/)."""
    hd = n_rows // n_head
    out = []
    for h in range(n_head):
        for i in range(hd // 2):
            out += [h * hd + i, h * hd + hd // 2 + i]
    return np.array(out)


def to_hf(w, fam):
    """Meta-named weights -> HF names with q/k rows in rotate-half order."""
    f = FAMILIES[fam]
    hf = {"model.embed_tokens.weight": w["tok_embeddings.weight"], "model.norm.weight": w["norm.weight"]}
    if "output.weight" in w:
        hf["lm_head.weight"] = w["output.weight"]
    names = {"attention_norm": "input_layernorm", "attention.wq": "self_attn.q_proj",
             "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
             "attention.wo": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
             "feed_forward.w2": "mlp.down_proj"}
    for i in range(N_LAYERS):
        for m, h in names.items():
            x = w[f"layers.{i}.{m}.weight"]
            if m in ("attention.wq", "attention.wk"):
                heads = f["n_heads"] if m == "attention.wq" else f["n_kv_heads"]
                y = np.empty_like(x)
                y[qk_perm(x.shape[0], heads)] = x
                x = y
            hf[f"model.layers.{i}.{h}.weight"] = x
    return hf


# ---- writing checkpoints --------------------------------------------------------------


def write_tokenizer_hf(d, kind, md):
    vocabs = vocabs_module()
    tcfg = {}
    if kind in ("llama3", "smollm"):
        vocabs.write_hf_tokenizer_json(md, os.path.join(d, "tokenizer.json"))
        toks = md["tokenizer.ggml.tokens"]
        tcfg["bos_token"] = toks[int(md["tokenizer.ggml.bos_token_id"])]
        tcfg["eos_token"] = toks[int(md["tokenizer.ggml.eos_token_id"])]
        if md.get("tokenizer.chat_template"):
            tcfg["chat_template"] = md["tokenizer.chat_template"]
        tcfg["add_bos_token"] = kind == "llama3"
    else:
        sp_md = dict(md)
        vocabs.write_spm_model(sp_md, os.path.join(d, "tokenizer.model"))
        tcfg.update(bos_token="<s>", eos_token="</s>", unk_token="<unk>", add_bos_token=True,
                    add_eos_token=False)
        if kind == "spm-pad":
            n = len(md["tokenizer.ggml.tokens"])
            with open(os.path.join(d, "added_tokens.json"), "w") as f:
                json.dump({"[PAD]": n}, f)
            tcfg["pad_token"] = "[PAD]"
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(tcfg, f)


def write_hf(d, fam, w, md, n_shards=1, dtype="float32"):
    """config.json + safetensors (one file, or n_shards with an index) + tokenizer."""
    from safetensors.numpy import save_file

    f = FAMILIES[fam]
    os.makedirs(d, exist_ok=True)
    n_vocab = w["tok_embeddings.weight"].shape[0]
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": DIM,
           "intermediate_size": FFN, "num_hidden_layers": N_LAYERS, "num_attention_heads": f["n_heads"],
           "num_key_value_heads": f["n_kv_heads"], "rms_norm_eps": f["eps"], "rope_theta": f["theta"],
           "max_position_embeddings": 2048, "vocab_size": n_vocab, "hidden_act": "silu",
           "tie_word_embeddings": bool(f.get("tied")), "torch_dtype": dtype,
           "bos_token_id": 1, "eos_token_id": 2}
    if f.get("rope_scaling"):
        cfg["rope_scaling"] = dict(f["rope_scaling"], rope_type="llama3")
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    hf = to_hf(w, fam)
    if dtype == "bfloat16":
        hf = {k: bf16_bits(v) for k, v in hf.items()}
    names = list(hf)
    if n_shards == 1:
        save_file(hf, os.path.join(d, "model.safetensors"))
    else:
        wm = {}
        for s in range(n_shards):
            part = names[s::n_shards]
            fn = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
            save_file({k: hf[k] for k in part}, os.path.join(d, fn))
            wm.update({k: fn for k in part})
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as fh:
            json.dump({"metadata": {}, "weight_map": wm}, fh)
    write_tokenizer_hf(d, f["vocab"], md)
    return d


def bf16_bits(x):
    """float32 -> bf16 (round to nearest even) as uint16 bits; safetensors'
    numpy writer takes bf16 only through torch, so tests store via torch."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16)


# Meta's model-parallel split axis per weight (None = replicated)
def _meta_axis(name, fam):
    if name.startswith("tok_embeddings"):
        return 0 if FAMILIES[fam]["vocab"] == "llama3" else 1
    for k, ax in (("wq", 0), ("wk", 0), ("wv", 0), ("w1", 0), ("w3", 0), ("output", 0), ("wo", 1), ("w2", 1)):
        if f".{k}." in f".{name}":
            return ax
    return None


def write_meta(d, fam, w, md, n_shards=1):
    """params.json + consolidated.NN.pth (torch.save, bf16 like Meta's) + tokenizer.model."""
    import torch

    f = FAMILIES[fam]
    os.makedirs(d, exist_ok=True)
    params = {"dim": DIM, "n_layers": N_LAYERS, "n_heads": f["n_heads"], "norm_eps": f["eps"],
              "multiple_of": 32, "vocab_size": -1 if f["vocab"] != "llama3" else w["tok_embeddings.weight"].shape[0]}
    if f["n_kv_heads"] != f["n_heads"]:
        params["n_kv_heads"] = f["n_kv_heads"]
    if f["theta"] != 1e4:
        params["rope_theta"] = f["theta"]
    if f.get("rope_scaling"):
        params["use_scaled_rope"] = True
    with open(os.path.join(d, "params.json"), "w") as fh:
        json.dump(params, fh)
    for s in range(n_shards):
        sd = {"rope.freqs": torch.zeros(DIM // f["n_heads"] // 2)}
        for k, x in w.items():
            ax = _meta_axis(k, fam)
            t = torch.from_numpy(x)
            if ax is not None:
                t = torch.chunk(t, n_shards, dim=ax)[s].clone()
            sd[k] = t.to(torch.float32)
        torch.save(sd, os.path.join(d, f"consolidated.{s:02d}.pth"))
    vocabs = vocabs_module()
    if f["vocab"] == "llama3":
        enc = vocabs.tiktoken_encoding(md)
        import base64

        with open(os.path.join(d, "tokenizer.model"), "wb") as fh:
            for tok, r in sorted(enc._mergeable_ranks.items(), key=lambda kv: kv[1]):
                fh.write(base64.b64encode(tok) + b" " + str(r).encode() + b"\n")
    else:
        vocabs.write_spm_model(md, os.path.join(d, "tokenizer.model"))
    return d


# ---- reading what we wrote ---------------------------------------------------------------


def gguf_tensors(path):
    """{name: float32 array in numpy shape} of a GGUF file: read with the
    runtime's reader (pyllama_q.gguf, independent of convert/), dequantized by
    the oracle (gguf.quants)."""
    import gguf

    from pyllama_q.gguf import GGUFFile

    out = {}
    with GGUFFile(path) as g:
        for name, t in g.tensors.items():
            a = g.array(name)
            if t.type in (0, 1):
                x = a.astype(np.float32)
            elif t.type == 30:
                x = (a.astype(np.uint32) << 16).view(np.float32)
            else:
                x = gguf.quants.dequantize(np.array(a), gguf.GGMLQuantizationType(t.type))
            out[name] = np.asarray(x, np.float32).reshape(tuple(reversed(t.shape)))
    return out


def gguf_fields(path):
    from pyllama_q.gguf import GGUFFile

    with GGUFFile(path) as g:
        return dict(g.metadata)


def gguf_to_meta(t, tied):
    """GGUF tensor names -> Meta names (same row layout)."""
    w = {"tok_embeddings.weight": t["token_embd.weight"], "norm.weight": t["output_norm.weight"]}
    w["output.weight"] = t.get("output.weight", t["token_embd.weight"])
    back = {"attn_norm": "attention_norm", "attn_q": "attention.wq", "attn_k": "attention.wk",
            "attn_v": "attention.wv", "attn_output": "attention.wo", "ffn_norm": "ffn_norm",
            "ffn_gate": "feed_forward.w1", "ffn_up": "feed_forward.w3", "ffn_down": "feed_forward.w2"}
    for k, v in t.items():
        if k.startswith("blk."):
            _, i, role, _ = k.split(".")
            w[f"layers.{i}.{back[role]}.weight"] = v
    return w


# ---- an independent reference forward (Meta's model.py, in numpy float64) ------------------


def rope_factors(head_dim, theta, rs):
    """Meta's apply_scaling for LLaMA 3.1 (per frequency), or ones."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2)[: head_dim // 2] / head_dim)
    if not rs:
        return freqs
    low_wl = rs["original_max_position_embeddings"] / rs["low_freq_factor"]
    high_wl = rs["original_max_position_embeddings"] / rs["high_freq_factor"]
    out = []
    for fr in freqs:
        wl = 2 * np.pi / fr
        if wl < high_wl:
            out.append(fr)
        elif wl > low_wl:
            out.append(fr / rs["factor"])
        else:
            sm = (rs["original_max_position_embeddings"] / wl - rs["low_freq_factor"]) / (
                rs["high_freq_factor"] - rs["low_freq_factor"])
            out.append((1 - sm) * fr / rs["factor"] + sm * fr)
    return np.array(out)


def meta_forward(w, n_heads, n_kv_heads, eps, theta, tokens, rope_scaling=None, freqs=None):
    """Logits (n_tok, vocab) of Meta's Transformer.forward on `tokens` from
    position 0: RMSNorm, rotary embedding on interleaved (even, odd) pairs as
    complex numbers, causal attention with repeated kv heads, SwiGLU."""
    f64 = {k: np.asarray(v, np.float64) for k, v in w.items()}
    x = f64["tok_embeddings.weight"][tokens]
    n, dim = x.shape
    hd = dim // n_heads
    if freqs is None:
        freqs = rope_factors(hd, theta, rope_scaling)
    cis = np.exp(1j * np.outer(np.arange(n), freqs))                  # (n, hd/2)

    def rms(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * g

    def rope(v):                                                       # (n, h, hd)
        c = v.reshape(n, v.shape[1], hd // 2, 2)
        c = (c[..., 0] + 1j * c[..., 1]) * cis[:, None, :]
        return np.stack([c.real, c.imag], -1).reshape(v.shape)

    mask = np.triu(np.full((n, n), -np.inf), 1)
    i = 0
    while f"layers.{i}.attention.wq.weight" in f64:
        p = f"layers.{i}."
        h = rms(x, f64[p + "attention_norm.weight"])
        q = rope((h @ f64[p + "attention.wq.weight"].T).reshape(n, n_heads, hd))
        k = rope((h @ f64[p + "attention.wk.weight"].T).reshape(n, n_kv_heads, hd))
        v = (h @ f64[p + "attention.wv.weight"].T).reshape(n, n_kv_heads, hd)
        rep = n_heads // n_kv_heads
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", s, v).reshape(n, -1)
        x = x + o @ f64[p + "attention.wo.weight"].T
        h = rms(x, f64[p + "ffn_norm.weight"])
        g = h @ f64[p + "feed_forward.w1.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ f64[p + "feed_forward.w3.weight"].T)) @ f64[
            p + "feed_forward.w2.weight"].T
        i += 1
    x = rms(x, f64["norm.weight"])
    return x @ f64["output.weight"].T


def gguf_forward(path, tokens):
    """Logits of a written GGUF through meta_forward (GGUF rows are Meta's
    interleaved layout; rope_freqs divides the frequencies, as llama.cpp does)."""
    fl = gguf_fields(path)
    t = gguf_tensors(path)
    w = gguf_to_meta(t, "output.weight" not in t)
    hd = int(fl["llama.rope.dimension_count"])
    theta = float(fl["llama.rope.freq_base"])
    freqs = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    if "rope_freqs.weight" in t:
        freqs = freqs / t["rope_freqs.weight"].astype(np.float64)
    return meta_forward(w, int(fl["llama.attention.head_count"]), int(fl["llama.attention.head_count_kv"]),
                        float(fl["llama.attention.layer_norm_rms_epsilon"]), theta, tokens, freqs=freqs)


def hf_logits(d, tokens):
    """transformers LlamaForCausalLM (float32, one thread) logits."""
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(1)
    m = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
    m.eval()
    with torch.no_grad():
        return m(torch.tensor([tokens])).logits[0].double().numpy()


def install_quant_fallback(monkeypatch):
    """Until csrc's pq_quantize lands on main: gguf.quants (bit-exact with
    ggml's reference encoders) when the C kernel returns an error."""
    import gguf

    from pyllama_q.convert import quantize as q

    ffi, lib = q._lib()
    x = np.ones(32, np.float32)
    y = np.empty(34, np.uint8)
    if lib.pq_quantize(8, ffi.cast("const float *", ffi.from_buffer(x)), ffi.from_buffer(y), 1, 32) == 0:
        return   # the C kernels work: the tests run the shipped path only

    def fq(t, x):
        return np.ascontiguousarray(gguf.quants.quantize(x, gguf.GGMLQuantizationType(t))).ravel()

    def fd(t, raw, rows, cols):
        return gguf.quants.dequantize(np.asarray(raw, np.uint8).reshape(rows, -1), gguf.GGMLQuantizationType(t))

    monkeypatch.setattr(q, "FALLBACK", fq)
    monkeypatch.setattr(q, "FALLBACK_DEQUANT", fd)


# ---- a real model exported to the Hugging Face layout --------------------------------------


def export_hf_from_gguf(path, d):
    """Write a GGUF llama model as an HF checkpoint: config.json, model.safetensors
    (float32 = the GGUF weights dequantized, q/k rows back in rotate-half order),
    tokenizer.json / tokenizer_config.json from its vocab. Returns the dequantized
    GGUF tensors."""
    from safetensors.numpy import save_file

    vocabs = vocabs_module()
    os.makedirs(d, exist_ok=True)
    fl = gguf_fields(path)
    t = gguf_tensors(path)
    n_heads, n_kv = int(fl["llama.attention.head_count"]), int(fl["llama.attention.head_count_kv"])
    tied = "output.weight" not in t
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
           "hidden_size": int(fl["llama.embedding_length"]),
           "intermediate_size": int(fl["llama.feed_forward_length"]),
           "num_hidden_layers": int(fl["llama.block_count"]), "num_attention_heads": n_heads,
           "num_key_value_heads": n_kv, "rms_norm_eps": float(fl["llama.attention.layer_norm_rms_epsilon"]),
           "rope_theta": float(fl["llama.rope.freq_base"]),
           "max_position_embeddings": int(fl["llama.context_length"]),
           "vocab_size": len(fl["tokenizer.ggml.tokens"]), "hidden_act": "silu",
           "tie_word_embeddings": tied, "torch_dtype": "float32",
           "bos_token_id": int(fl["tokenizer.ggml.bos_token_id"]),
           "eos_token_id": int(fl["tokenizer.ggml.eos_token_id"])}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    w = gguf_to_meta(t, tied)
    fam = "_export"
    FAMILIES[fam] = dict(n_heads=n_heads, n_kv_heads=n_kv, tied=tied)
    try:
        global N_LAYERS
        saved, N_LAYERS = N_LAYERS, cfg["num_hidden_layers"]
        if tied:
            del w["output.weight"]
        hf = to_hf(w, fam)
    finally:
        N_LAYERS = saved
        del FAMILIES[fam]
    save_file({k: np.ascontiguousarray(v) for k, v in hf.items()}, os.path.join(d, "model.safetensors"))
    md = vocabs.read_metadata(path)
    vocabs.write_hf_tokenizer_json(md, os.path.join(d, "tokenizer.json"))
    toks = md["tokenizer.ggml.tokens"]
    tcfg = {"bos_token": toks[int(md["tokenizer.ggml.bos_token_id"])],
            "eos_token": toks[int(md["tokenizer.ggml.eos_token_id"])],
            "unk_token": toks[int(md["tokenizer.ggml.unknown_token_id"])],
            "pad_token": toks[int(md["tokenizer.ggml.padding_token_id"])],
            "add_bos_token": bool(md.get("tokenizer.ggml.add_bos_token", False)),
            "chat_template": md["tokenizer.chat_template"]}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(tcfg, f)
    return t


def kl_top1(ref_logits, logits):
    """Mean KL(ref || ours) in nats and top-1 agreement, per position."""
    def logsm(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = logsm(ref_logits), logsm(logits)
    kl = (np.exp(lp) * (lp - lq)).sum(-1).mean()
    top1 = (ref_logits.argmax(-1) == logits.argmax(-1)).mean()
    return float(kl), float(top1)


def runtime_logits(path, tokens):
    """Our logits: the pyllama-q runtime (pyllama_q.model) on a written file,
    F32 KV cache, every position."""
    from pyllama_q.model import KVContext, Weights

    with Weights(path, n_threads=1) as w:
        with KVContext(w, n_ctx=max(64, len(tokens)), kv_type="f32") as c:
            return np.array(c.eval(tokens, 0, all_logits=True), np.float64)
