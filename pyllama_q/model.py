"""The low-level model wrapper: GGUF weights -> C pq_model, and KV-cache sessions.

What it is: `Weights` (a memory-mapped GGUF llama model handed to the C core
by pointer, plus its thread pool) and `KVContext` (one KV cache: evaluate
tokens at positions, get logits). What it is not: tokenization, sampling or
chat (see the higher-level session API); no torch here.

Memory: tensor data is never copied. The C model borrows pointers into the
GGUF memory map, so the map stays open until the model is freed; `close()`
(or leaving a `with` block, or garbage collection) frees C memory first and
unmaps after.
"""
import weakref

import numpy as np

from ._pq import ffi, lib
from .errors import FormatError, UnsupportedError, check
from .gguf import GGUFFile, type_name
from ._closing import OwnsC

# Weight types the forward pass can multiply by (ggml type ids); the kernel
# layer has the final word (pq_type_supported).
MATMUL_TYPES = {t: type_name(t) for t in (0, 1, 30, 2, 3, 8) if lib.pq_type_supported(t)}
KV_TYPES = {"f32": lib.PQ_TYPE_F32, "f16": lib.PQ_TYPE_F16}

# GGUF tensor name -> C role (global tensors).
_GLOBAL_ROLES = {
    "token_embd.weight": lib.PQ_T_TOK_EMBD,
    "output_norm.weight": lib.PQ_T_OUTPUT_NORM,
    "output.weight": lib.PQ_T_OUTPUT,
    "rope_freqs.weight": lib.PQ_T_ROPE_FREQS,
}
# blk.N.<name>.weight -> C role (per-layer tensors).
_LAYER_ROLES = {
    "attn_norm": lib.PQ_T_ATTN_NORM,
    "attn_q": lib.PQ_T_WQ,
    "attn_k": lib.PQ_T_WK,
    "attn_v": lib.PQ_T_WV,
    "attn_output": lib.PQ_T_WO,
    "ffn_norm": lib.PQ_T_FFN_NORM,
    "ffn_gate": lib.PQ_T_FFN_GATE,
    "ffn_up": lib.PQ_T_FFN_UP,
    "ffn_down": lib.PQ_T_FFN_DOWN,
}
_NORM_ROLES = {lib.PQ_T_OUTPUT_NORM, lib.PQ_T_ATTN_NORM, lib.PQ_T_FFN_NORM,
               lib.PQ_T_ROPE_FREQS}


def _role_of(name):
    """(role, layer) for a GGUF tensor name, or None for a tensor we ignore."""
    if name in _GLOBAL_ROLES:
        return _GLOBAL_ROLES[name], -1
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[3] == "weight":
        role = _LAYER_ROLES.get(parts[2])
        if role is not None:
            return role, int(parts[1])
    return None


def read_hparams(g):
    """The llama.* hyperparameters of an opened GGUFFile as a dict."""
    md, where = g.metadata, g.path

    def need(key):
        if key not in md:
            raise FormatError(f"{where}: missing metadata key {key!r}")
        return md[key]

    arch = md.get("general.architecture")
    if arch != "llama":
        raise UnsupportedError(f"{where}: architecture {arch!r} is not supported (only 'llama')")
    if "token_embd.weight" not in g.tensors:
        raise FormatError(f"{where}: missing tensor 'token_embd.weight'")
    dim = int(need("llama.embedding_length"))
    n_heads = int(need("llama.attention.head_count"))
    head_dim = int(md.get("llama.attention.key_length", dim // max(n_heads, 1)))
    hp = {
        "n_vocab": int(g.tensors["token_embd.weight"].shape[-1]),
        "dim": dim,
        "n_layers": int(need("llama.block_count")),
        "n_heads": n_heads,
        "n_kv_heads": int(md.get("llama.attention.head_count_kv", n_heads)),
        "head_dim": head_dim,
        "ffn_dim": int(need("llama.feed_forward_length")),
        "n_ctx_train": int(md.get("llama.context_length", 2048)),
        "rope_dim": int(md.get("llama.rope.dimension_count", head_dim)),
        "rope_base": float(md.get("llama.rope.freq_base", 10000.0)),
        "rms_eps": float(need("llama.attention.layer_norm_rms_epsilon")),
    }
    vlen = md.get("llama.attention.value_length", head_dim)
    if int(vlen) != head_dim:
        raise UnsupportedError(f"{where}: llama.attention.value_length {vlen} != key_length "
                               f"{head_dim} is not supported")
    for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "rope_dim"):
        if hp[k] <= 0 or hp[k] > 1 << 20:
            raise FormatError(f"{where}: hyperparameter {k} = {hp[k]} is out of range")
    if n_heads % hp["n_kv_heads"]:
        raise FormatError(f"{where}: head_count {n_heads} is not a multiple of "
                          f"head_count_kv {hp['n_kv_heads']}")
    if hp["rope_dim"] > head_dim or hp["rope_dim"] % 2:
        raise FormatError(f"{where}: rope.dimension_count {hp['rope_dim']} does not fit "
                          f"head dim {head_dim}")
    return hp


def _expected_shape(hp, role):
    """GGUF shape (ne0, ne1) or (ne0,) a role must have, for error messages."""
    q, kv = hp["n_heads"] * hp["head_dim"], hp["n_kv_heads"] * hp["head_dim"]
    d, f = hp["dim"], hp["ffn_dim"]
    return {
        lib.PQ_T_TOK_EMBD: (d, hp["n_vocab"]), lib.PQ_T_OUTPUT: (d, hp["n_vocab"]),
        lib.PQ_T_OUTPUT_NORM: (d,), lib.PQ_T_ATTN_NORM: (d,), lib.PQ_T_FFN_NORM: (d,),
        lib.PQ_T_ROPE_FREQS: (hp["rope_dim"] // 2,), lib.PQ_T_WQ: (d, q),
        lib.PQ_T_WK: (d, kv), lib.PQ_T_WV: (d, kv), lib.PQ_T_WO: (q, d),
        lib.PQ_T_FFN_GATE: (d, f), lib.PQ_T_FFN_UP: (d, f), lib.PQ_T_FFN_DOWN: (f, d),
    }[role]


class Weights(OwnsC):
    """A llama GGUF model loaded for the C forward pass.

    `n_threads`: workers of the model's thread pool (None or <= 0: the number
    of physical cores). `hparams` is a dict of the model's hyperparameters;
    `gguf` the open GGUFFile (metadata for tokenizers and templates).
    """

    def __init__(self, path, n_threads=None, progress=None):
        self._ptr = None
        self._contexts = weakref.WeakSet()
        self.gguf = GGUFFile(path)
        try:
            self._build(n_threads, progress)
        except BaseException:
            self.close()
            raise

    def _build(self, n_threads, progress=None):
        g = self.gguf
        self.path = g.path
        self.hparams = hp = read_hparams(g)
        chp = ffi.new("pq_hparams *", hp)
        pp = ffi.new("pq_model **")
        check(lib.pq_model_init(pp, chp, 0 if n_threads is None else int(n_threads)),
              f"{self.path}: model")
        self._ptr = pp[0]
        n_tensors = len(g.tensors)
        for i_tensor, (name, t) in enumerate(g.tensors.items()):
            if progress is not None:  # fraction of tensors handed to the C model
                progress(i_tensor / max(n_tensors, 1))
            rl = _role_of(name)
            if rl is None:
                continue
            role, layer = rl
            where = f"{self.path}: tensor {name!r}"
            if layer >= hp["n_layers"]:
                raise FormatError(f"{where}: layer {layer} but block_count is {hp['n_layers']}")
            if role in _NORM_ROLES and t.type != 0:
                raise UnsupportedError(f"{where} has type {type_name(t.type)}; norms must be F32")
            if t.type not in MATMUL_TYPES:
                raise UnsupportedError(
                    f"{where} has type {type_name(t.type)}, which pyllama-q cannot run "
                    f"(supported: {', '.join(MATMUL_TYPES.values())})")
            if len(t.shape) > 2:
                raise FormatError(f"{where}: {len(t.shape)}-D tensor, expected 1-D or 2-D")
            ne0 = t.shape[0]
            ne1 = t.shape[1] if len(t.shape) > 1 else 1
            st = lib.pq_model_set_tensor(self._ptr, role, layer, t.type,
                                         ffi.cast("void *", g.address(name)), ne0, ne1)
            if st == lib.PQ_ERR_SHAPE:
                raise FormatError(f"{where}: shape {tuple(t.shape)} does not match the "
                                  f"hyperparameters (expected {_expected_shape(hp, role)})")
            check(st, where)
        st = lib.pq_model_finalize(self._ptr)
        if st == lib.PQ_ERR_MISSING:
            raise FormatError(f"{self.path}: missing tensor {self._first_missing()!r}")
        check(st, f"{self.path}: model")

    def _first_missing(self):
        names = ["token_embd.weight", "output_norm.weight"]
        for i in range(self.hparams["n_layers"]):
            names += [f"blk.{i}.{n}.weight" for n in _LAYER_ROLES]
        return next((n for n in names if n not in self.gguf.tensors), "?")

    @property
    def n_threads(self):
        return lib.pq_model_n_threads(self._ptr) if self._ptr is not None else 0

    @property
    def n_vocab(self):
        return self.hparams["n_vocab"]

    def close(self):
        """Free every session of this model, the C model, then the map."""
        for c in list(self._contexts):
            c.close()
        p, self._ptr = self._ptr, None
        if p is not None:
            lib.pq_model_free(p)
        g = getattr(self, "gguf", None)
        if g is not None:
            g.close()



class KVContext(OwnsC):
    """One session: a KV cache of n_ctx positions over a Weights.

    `eval(tokens, pos)` runs tokens at positions pos..pos+len-1 (any number,
    split into chunks of n_batch) and returns float32 logits of the last
    token, shape (n_vocab,), or of every token, shape (n, n_vocab), with
    all_logits=True. Cache entries at positions >= pos are overwritten.
    """

    def __init__(self, weights, n_ctx, n_batch=512, kv_type="f16"):
        self._ptr = None
        if weights._ptr is None:
            raise ValueError("KVContext: the Weights are closed")
        if kv_type not in KV_TYPES:
            raise ValueError(f"KVContext: kv_type {kv_type!r} is not one of {sorted(KV_TYPES)}")
        if n_ctx <= 0 or n_batch <= 0:
            raise ValueError(f"KVContext: n_ctx ({n_ctx}) and n_batch ({n_batch}) must be > 0")
        self.weights = weights  # keeps the model (and its map) alive
        self.n_ctx = int(n_ctx)
        self.n_batch = min(int(n_batch), self.n_ctx)
        self.kv_type = kv_type
        pp = ffi.new("pq_ctx **")
        check(lib.pq_ctx_init(pp, weights._ptr, self.n_ctx, self.n_batch, KV_TYPES[kv_type]),
              "KVContext")
        self._ptr = pp[0]
        weights._contexts.add(self)

    @property
    def kv_bytes(self):
        return lib.pq_ctx_kv_bytes(self._ptr) if self._ptr is not None else 0

    def eval(self, tokens, pos, all_logits=False):
        # Kept lean: in a decode loop this runs once per token right after
        # the step has streamed the weights through the caches, when every
        # numpy call is slow (cold), so one-token lists skip numpy entirely.
        if self._ptr is None:
            raise ValueError("KVContext is closed")
        n_vocab = self.weights.n_vocab
        if type(tokens) is list and len(tokens) <= 16:
            toks = [int(t) for t in tokens]
            bad = [t for t in toks if not 0 <= t < n_vocab]
            tp = ffi.new("int32_t[]", toks) if toks and not bad else None
        else:
            toks = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
            bad = toks[(toks < 0) | (toks >= n_vocab)]
            tp = ffi.from_buffer("int32_t[]", toks) if len(toks) else None
        n = len(toks)
        if n == 0:
            raise ValueError("KVContext.eval: no tokens")
        if pos < 0:
            raise ValueError(f"KVContext.eval: negative position {pos}")
        if len(bad):
            raise ValueError(f"KVContext.eval: token id {int(bad[0])} is outside the "
                             f"vocabulary (0..{n_vocab - 1})")
        if pos + n > self.n_ctx:
            from .errors import ContextFullError
            raise ContextFullError(f"KVContext.eval: positions {pos}..{pos + n - 1} do not fit "
                                   f"the context of {self.n_ctx}")
        out = np.empty((n if all_logits else 1, n_vocab), dtype=np.float32)
        op = ffi.from_buffer("float[]", out)
        for i in range(0, n, self.n_batch):
            m = min(self.n_batch, n - i)
            if all_logits:
                dst = op + i * n_vocab
            elif i + m == n:
                dst = op
            else:
                dst = ffi.NULL  # no logits wanted from this chunk
            check(lib.pq_ctx_eval(self._ptr, tp + i, m, pos + i, dst, 1 if all_logits else 0),
                  "KVContext.eval")
        return out if all_logits else out[0]

    def cancel(self):
        """Thread-safe: the running (or next) eval raises CancelledError after
        the layer in progress; cache positions before its `pos` stay valid."""
        if self._ptr is not None:
            lib.pq_ctx_cancel(self._ptr)

    def close(self):
        p, self._ptr = self._ptr, None
        if p is not None:
            lib.pq_ctx_free(p)

