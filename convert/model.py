"""model.py: a checkpoint directory -> hyperparameters + GGUF tensor plan.

What it is: the literal name maps (Hugging Face and Meta -> llama.cpp's
names), the q/k permutation for Hugging Face weights, the merge of Meta
model-parallel shards, shape checks against the hyperparameters and the
LLaMA 3.1 rope_freqs factors. The result is a Plan: hparams, a Vocab, and
[(gguf name, Src)] in llama.cpp's order.
What it is not: file parsing (readers.py, vocab.py) or encoding (quantize.py).
"""
import glob
import json
import math
import os
import re

import numpy as np

from .errors import ConvertError
from .readers import ConcatSrc, ConstSrc, RowPermSrc, read_safetensors, read_torch_zip
from .vocab import load_hf_vocab, load_meta_vocab


class Plan:
    def __init__(self, hp, vocab, tensors, name, source_kind):
        self.hp, self.vocab, self.tensors = hp, vocab, tensors
        self.name, self.source_kind = name, source_kind


def _read_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConvertError(f"missing {what}: {path}") from None
    except ValueError:
        raise ConvertError(f"{path}: not valid JSON") from None


# ---- q/k permutation and rope factors ------------------------------------------------


def qk_perm(n_rows, n_head):
    """Row order taking HF's rotate-half rows to GGUF's interleaved pairs: per
    head, output row 2i+p is source row p*(head_dim/2)+i (llama.cpp's
    reshape(n_head, 2, head_dim/2, dim).swapaxes(1, 2))."""
    hd = n_rows // n_head
    idx = np.arange(n_rows).reshape(n_head, 2, hd // 2).swapaxes(1, 2)
    return idx.reshape(-1)


def llama3_rope_factors(head_dim, theta, factor, low, high, old_ctx):
    """Per-frequency divisors for LLaMA 3.1 rope scaling (rope_freqs.weight),
    computed as Meta's apply_scaling does, in float32 like llama.cpp's converter."""
    freqs = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    low_wl, high_wl = old_ctx / low, old_ctx / high
    out = []
    for fr in freqs.astype(np.float64):
        wl = 2 * math.pi / fr
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(factor)
        else:
            smooth = (old_ctx / wl - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


# ---- shape checks -----------------------------------------------------------------


def expected_shapes(hp):
    hd = hp["head_dim"]
    sh = {"token_embd.weight": (hp["n_vocab"], hp["dim"]), "output_norm.weight": (hp["dim"],),
          "output.weight": (hp["n_vocab"], hp["dim"])}
    for i in range(hp["n_layers"]):
        b = f"blk.{i}."
        sh.update({b + "attn_norm.weight": (hp["dim"],), b + "ffn_norm.weight": (hp["dim"],),
                   b + "attn_q.weight": (hp["n_heads"] * hd, hp["dim"]),
                   b + "attn_k.weight": (hp["n_kv_heads"] * hd, hp["dim"]),
                   b + "attn_v.weight": (hp["n_kv_heads"] * hd, hp["dim"]),
                   b + "attn_output.weight": (hp["dim"], hp["n_heads"] * hd),
                   b + "ffn_gate.weight": (hp["ffn_dim"], hp["dim"]),
                   b + "ffn_up.weight": (hp["ffn_dim"], hp["dim"]),
                   b + "ffn_down.weight": (hp["dim"], hp["ffn_dim"])})
    return sh


def order_key(name):
    """llama.cpp's order: token_embd, rope_freqs, blk.0..N (attention then ffn), output_norm, output."""
    per = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    m = re.match(r"blk\.(\d+)\.(\w+)\.weight$", name)
    if m:
        return (1, int(m.group(1)), per.index(m.group(2)) if m.group(2) in per else 99)
    head = {"token_embd.weight": 0, "rope_freqs.weight": 0.5}
    return (0, head[name], 0) if name in head else (2, ["output_norm.weight", "output.weight"].index(name), 0)


def finish(hp, vocab, mapped, name, kind, where):
    """Check shapes, pad the vocab, add rope_freqs, order the tensors."""
    if len(vocab.tokens) > hp["n_vocab"]:
        raise ConvertError(f"{where}: tokenizer has {len(vocab.tokens)} tokens, the model {hp['n_vocab']}")
    vocab.pad_to(hp["n_vocab"])
    want = expected_shapes(hp)
    for n, src in mapped.items():
        if n in want and tuple(src.shape) != want[n]:
            raise ConvertError(f"{src.where}: shape {tuple(src.shape)} does not match the config "
                               f"(expected {want[n]} for {n})")
    for n in want:
        if n not in mapped and n != "output.weight":
            raise ConvertError(f"{where}: tensor for {n} is missing from the checkpoint")
    rs = hp.get("rope_scaling")
    if rs and rs.get("type") == "llama3":
        mapped["rope_freqs.weight"] = ConstSrc(llama3_rope_factors(
            hp["head_dim"], hp["rope_theta"], rs["factor"], rs["low_freq_factor"],
            rs["high_freq_factor"], rs["original_max_position_embeddings"]), "rope_freqs")
    tensors = sorted(mapped.items(), key=lambda kv: order_key(kv[0]))
    return Plan(hp, vocab, tensors, name, kind)


# ---- Hugging Face layout ------------------------------------------------------------

_HF_MAP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
_HF_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def hf_hparams(cfg, where):
    archs = cfg.get("architectures") or [cfg.get("model_type", "?")]
    if "LlamaForCausalLM" not in archs:
        raise ConvertError(f"{where}: unknown architecture {archs[0]!r} (only LlamaForCausalLM is converted)")
    try:
        n_heads = int(cfg["num_attention_heads"])
        dim = int(cfg["hidden_size"])
        hp = {"dim": dim, "n_layers": int(cfg["num_hidden_layers"]), "n_heads": n_heads,
              "n_kv_heads": int(cfg.get("num_key_value_heads") or n_heads),
              "ffn_dim": int(cfg["intermediate_size"]), "n_vocab": int(cfg["vocab_size"]),
              "head_dim": int(cfg.get("head_dim") or dim // n_heads),
              "rms_eps": float(cfg.get("rms_norm_eps", 1e-6)),
              "rope_theta": float(cfg.get("rope_theta", 10000.0)),
              "n_ctx": int(cfg.get("max_position_embeddings", 2048))}
    except KeyError as e:
        raise ConvertError(f"{where}: config.json lacks {e.args[0]}") from None
    rs = cfg.get("rope_scaling")
    if rs:
        kind = rs.get("rope_type") or rs.get("type")
        if kind == "llama3":
            hp["rope_scaling"] = {"type": "llama3", "factor": float(rs["factor"]),
                                  "low_freq_factor": float(rs.get("low_freq_factor", 1.0)),
                                  "high_freq_factor": float(rs.get("high_freq_factor", 4.0)),
                                  "original_max_position_embeddings":
                                      int(rs.get("original_max_position_embeddings", 8192))}
        elif kind == "linear":
            hp["rope_scaling"] = {"type": "linear", "factor": float(rs["factor"])}
        elif kind not in (None, "default"):
            raise ConvertError(f"{where}: rope_scaling type {kind!r} is not supported")
    return hp


def _hf_shards(d):
    """[(file, reader)] of the checkpoint files, checked to exist."""
    for index, reader in (("model.safetensors.index.json", read_safetensors),
                          ("pytorch_model.bin.index.json", read_torch_zip)):
        p = os.path.join(d, index)
        if os.path.exists(p):
            wm = _read_json(p, index).get("weight_map")
            if not isinstance(wm, dict):
                raise ConvertError(f"{p}: no weight_map")
            files = sorted(set(wm.values()))
            for f in files:
                if not os.path.exists(os.path.join(d, f)):
                    raise ConvertError(f"missing shard {os.path.join(d, f)} (listed in {index})")
            return [(os.path.join(d, f), reader) for f in files]
    for single, reader in (("model.safetensors", read_safetensors), ("pytorch_model.bin", read_torch_zip)):
        if os.path.exists(os.path.join(d, single)):
            return [(os.path.join(d, single), reader)]
    raise ConvertError(f"{d}: no model.safetensors, safetensors index or pytorch_model.bin")


def plan_hf(d, name=None):
    cfg = _read_json(os.path.join(d, "config.json"), "config.json")
    hp = hf_hparams(cfg, os.path.join(d, "config.json"))
    vocab = load_hf_vocab(d, cfg)
    mapped = {}
    for path, reader in _hf_shards(d):
        for key, src in reader(path).items():
            if key.endswith("rotary_emb.inv_freq"):
                continue
            m = re.match(r"model\.layers\.(\d+)\.(.+)\.weight$", key)
            if key in _HF_MAP:
                gname = _HF_MAP[key]
            elif m and m.group(2) in _HF_LAYER and int(m.group(1)) < hp["n_layers"]:
                gname = f"blk.{m.group(1)}.{_HF_LAYER[m.group(2)]}.weight"
            else:
                raise ConvertError(f"{src.where}: unexpected tensor (not part of LlamaForCausalLM)")
            if gname in mapped:
                raise ConvertError(f"{src.where}: tensor appears twice in the checkpoint")
            if gname.endswith("attn_q.weight") or gname.endswith("attn_k.weight"):
                heads = hp["n_heads"] if "attn_q" in gname else hp["n_kv_heads"]
                if len(src.shape) != 2 or src.shape[0] % (2 * heads):
                    raise ConvertError(f"{src.where}: shape {src.shape} does not split into {heads} heads")
                src = RowPermSrc(src, qk_perm(src.shape[0], heads))
            mapped[gname] = src
    if cfg.get("tie_word_embeddings") and "output.weight" in mapped:
        del mapped["output.weight"]   # the runtime reads token_embd for the output
    name = name or os.path.basename(os.path.normpath(cfg.get("_name_or_path") or os.path.abspath(d)))
    return finish(hp, vocab, mapped, name, "hf", d)


# ---- Meta layout ------------------------------------------------------------------

_META_MAP = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
             "output.weight": "output.weight"}
_META_LAYER = {"attention_norm": "attn_norm", "attention.wq": "attn_q", "attention.wk": "attn_k",
               "attention.wv": "attn_v", "attention.wo": "attn_output", "ffn_norm": "ffn_norm",
               "feed_forward.w1": "ffn_gate", "feed_forward.w3": "ffn_up", "feed_forward.w2": "ffn_down"}
# model-parallel split axis: column-parallel (0), row-parallel (1), replicated (None)
_META_AXIS = {"attn_q": 0, "attn_k": 0, "attn_v": 0, "ffn_gate": 0, "ffn_up": 0, "output": 0,
              "attn_output": 1, "ffn_down": 1, "attn_norm": None, "ffn_norm": None, "output_norm": None}


def meta_hparams(params, n_vocab, ffn_dim, tiktoken, where):
    try:
        dim, n_heads = int(params["dim"]), int(params["n_heads"])
        hp = {"dim": dim, "n_layers": int(params["n_layers"]), "n_heads": n_heads,
              "n_kv_heads": int(params.get("n_kv_heads") or n_heads), "head_dim": dim // n_heads,
              "ffn_dim": ffn_dim, "n_vocab": n_vocab, "rms_eps": float(params.get("norm_eps", 1e-5)),
              "rope_theta": float(params.get("rope_theta", 10000.0))}
    except KeyError as e:
        raise ConvertError(f"{where}: params.json lacks {e.args[0]}") from None
    # context length: not in params.json; known per family
    if params.get("max_seq_len"):
        hp["n_ctx"] = int(params["max_seq_len"])
    elif tiktoken:
        hp["n_ctx"] = 131072 if params.get("use_scaled_rope") else 8192
    elif hp["rope_theta"] == 1e6:
        hp["n_ctx"] = 16384                           # Code LLaMA
    elif hp["rms_eps"] == 1e-5 or "n_kv_heads" in params:
        hp["n_ctx"] = 4096                            # LLaMA 2
    else:
        hp["n_ctx"] = 2048                            # LLaMA 1
    if params.get("use_scaled_rope"):
        sf = params.get("rope_scaling_factor", 8.0)
        hp["rope_scaling"] = {"type": "llama3", "factor": float(sf), "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    return hp


def _merge_meta(key, gname, shards, files, dim):
    """One tensor from every model-parallel shard, joined along its split axis."""
    srcs = []
    for f, sd in zip(files, shards):
        if key not in sd:
            raise ConvertError(f"{os.path.basename(f)}: tensor {key} is missing")
        srcs.append(sd[key])
    if len(srcs) == 1:
        return srcs[0]
    role = gname.split(".")[-2] if gname.startswith("blk.") else gname.split(".")[0]
    if role == "token_embd":
        # LLaMA 1/2 split the embedding along the model dim, LLaMA 3 along the vocab
        axis = 0 if all(s.shape[1] == dim for s in srcs) else 1
    else:
        axis = _META_AXIS[role]
    first = srcs[0]
    for f, s in zip(files[1:], srcs[1:]):
        other = [d for i, d in enumerate(s.shape) if i != axis] if axis is not None else list(s.shape)
        ref = [d for i, d in enumerate(first.shape) if i != axis] if axis is not None else list(first.shape)
        if len(s.shape) != len(first.shape) or other != ref:
            raise ConvertError(f"{os.path.basename(f)}: {key} shape {s.shape} does not match "
                               f"{os.path.basename(files[0])} {first.shape}")
    if axis is None:
        return first
    return ConcatSrc(srcs, axis)


def plan_meta(d, name=None):
    params = _read_json(os.path.join(d, "params.json"), "params.json")
    files = sorted(glob.glob(os.path.join(d, "consolidated.*.pth")))
    if not files:
        raise ConvertError(f"{d}: no consolidated.*.pth shards")
    nums = [int(re.search(r"consolidated\.(\d+)\.pth$", f).group(1)) for f in files]
    for want in range(max(nums) + 1):
        if want not in nums:
            raise ConvertError(f"missing shard {os.path.join(d, f'consolidated.{want:02d}.pth')}")
    vocab = load_meta_vocab(d, bool(params.get("use_scaled_rope")))
    shards = [read_torch_zip(f) for f in files]
    dim = int(params.get("dim", 0))
    mapped = {}
    for key in shards[0]:
        if key == "rope.freqs":
            continue
        m = re.match(r"layers\.(\d+)\.(.+)\.weight$", key)
        if key in _META_MAP:
            gname = _META_MAP[key]
        elif m and m.group(2) in _META_LAYER:
            gname = f"blk.{m.group(1)}.{_META_LAYER[m.group(2)]}.weight"
        else:
            raise ConvertError(f"{os.path.basename(files[0])}: unexpected tensor {key}")
        mapped[gname] = _merge_meta(key, gname, shards, files, dim)
    for f, sd in zip(files[1:], shards[1:]):
        extra = set(sd) - set(shards[0])
        if extra:
            raise ConvertError(f"{os.path.basename(f)}: tensor {sorted(extra)[0]} is not in {os.path.basename(files[0])}")
    if "token_embd.weight" not in mapped or "blk.0.ffn_gate.weight" not in mapped:
        raise ConvertError(f"{d}: checkpoint lacks tok_embeddings or layers.0.feed_forward.w1")
    n_vocab = mapped["token_embd.weight"].shape[0]
    if int(params.get("vocab_size", -1)) > 0 and int(params["vocab_size"]) != n_vocab:
        raise ConvertError(f"{d}: params.json vocab_size {params['vocab_size']} but tok_embeddings has {n_vocab} rows")
    hp = meta_hparams(params, n_vocab, mapped["blk.0.ffn_gate.weight"].shape[0], vocab.model == "gpt2", d)
    return finish(hp, vocab, mapped, name or os.path.basename(os.path.abspath(d)), "meta", d)


def plan_dir(d, name=None):
    if not os.path.isdir(d):
        raise ConvertError(f"{d}: no such model directory or file")
    if os.path.exists(os.path.join(d, "config.json")):
        return plan_hf(d, name)
    if os.path.exists(os.path.join(d, "params.json")) or glob.glob(os.path.join(d, "consolidated.*.pth")):
        return plan_meta(d, name)
    raise ConvertError(f"{d}: neither a Hugging Face (config.json) nor a Meta (params.json) checkpoint")
