"""Session state as bytes: save a session, restore it into another session of
the same model, and the KV-cache operations behind it (context shift).

What it is: a versioned binary format and the checks that guard it, plus
thin wrappers of the C cache functions (csrc/state.c). What it is not: the
session logic (api.Session calls these).

Format (little-endian), version 1:

    offset  size  field
    0       8     magic b"PQSTATE\\0"
    8       4     version (1)
    12      32    model fingerprint: sha256 of hparams + tensor names/types/shapes
    44      4     kv type (ggml id: 0 = F32, 1 = F16)
    48      4     n_layers
    52      4     kv_dim (n_kv_heads * head_dim)
    56      4     n_evaluated: tokens whose K/V rows follow (positions 0..n-1)
    60      4     n_pending: sampled tokens not yet evaluated (0 or 1)
    64      4     n_vocab
    68      4     has_logits (0/1): the logits after the last evaluated token follow
    72      4     sampler_len: bytes of the sampler JSON (0 = no sampler)
    76      ...   tokens int32 (n_evaluated + n_pending), sampler JSON (settings and
                  numpy bit_generator.state), logits f32 (n_vocab) if has_logits,
                  KV rows: per layer K rows then V rows, (n_evaluated, kv_dim) each
    end-32  32    sha256 of every byte before it

Everything is checked (size, magic, version, checksum, fingerprint, shapes,
token ids, JSON) before a byte reaches the cache; failures raise StateError.
"""
import hashlib
import json
import os
import struct

import numpy as np

from ._pq import ffi, lib
from .errors import StateError, check

MAGIC = b"PQSTATE\0"
VERSION = 1
_HEAD = struct.Struct("<8sI32sIIIIIIII")
_SUM = 32


# --- model fingerprint ------------------------------------------------------------

def model_fingerprint(weights):
    """sha256 (32 bytes) of the hyperparameters and every tensor's name, type
    and shape: cheap (no weight bytes read) and different for any model whose
    caches could not be exchanged. Cached on the weights object."""
    fp = getattr(weights, "_pq_fingerprint", None)
    if fp is not None:
        return fp
    h = hashlib.sha256()
    h.update(json.dumps(weights.hparams, sort_keys=True).encode())
    for name in sorted(weights.gguf.tensors):
        t = weights.gguf.tensors[name]
        h.update(f"\n{name}:{int(t.type)}:{','.join(str(int(d)) for d in t.shape)}".encode())
    fp = h.digest()
    weights._pq_fingerprint = fp
    return fp


# --- KV cache wrappers --------------------------------------------------------------

def _ptr(kv):
    if getattr(kv, "_ptr", None) is None:
        raise StateError("session is closed")
    return kv._ptr


def kv_save(kv, n_pos):
    """K/V rows of positions [0, n_pos) as bytes (layout of the format above)."""
    p = _ptr(kv)
    n = lib.pq_ctx_kv_state_bytes(p, n_pos)
    buf = bytearray(n)
    check(lib.pq_ctx_kv_save(p, n_pos, ffi.from_buffer(buf), n), "save KV cache")
    return bytes(buf)


def kv_load(kv, n_pos, data):
    p = _ptr(kv)
    check(lib.pq_ctx_kv_load(p, n_pos, ffi.from_buffer(data), len(data)), "restore KV cache")


def kv_shift(kv, n_keep, n_discard, n_used):
    """Drop cached positions [n_keep, n_keep+n_discard) and re-rotate the rest."""
    shift = getattr(kv, "shift", None)  # test doubles bring their own
    if shift is not None:
        return shift(n_keep, n_discard, n_used)
    check(lib.pq_ctx_kv_shift(_ptr(kv), n_keep, n_discard, n_used), "context shift")


def kv_rows(kv, layer, pos):
    """(k, v): the cached rows of one layer and position as float32 arrays."""
    p = _ptr(kv)
    hp = kv.weights.hparams
    kd = hp["n_kv_heads"] * hp["head_dim"]
    k = np.full(kd, np.nan, dtype=np.float32)
    v = np.full(kd, np.nan, dtype=np.float32)
    check(lib.pq_ctx_kv_get(p, layer, pos, ffi.cast("float *", k.ctypes.data),
                            ffi.cast("float *", v.ctypes.data)), "read KV cache")
    return k, v


# --- sampler state -----------------------------------------------------------------

def sampler_to_json(sampler):
    p = dict(sampler.params.__dict__)
    p["logit_bias"] = {str(int(k)): float(v) for k, v in (p.get("logit_bias") or {}).items()}
    return json.dumps({"params": p, "rng": sampler.rng.bit_generator.state}).encode()


def sampler_from_json(raw):
    from .sampling import Sampler, SamplerParams
    try:
        d = json.loads(raw.decode())
        p = dict(d["params"])
        p["logit_bias"] = {int(k): float(v) for k, v in p.get("logit_bias", {}).items()}
        s = Sampler(SamplerParams(**p))
        st = d["rng"]
        bg = getattr(np.random, st["bit_generator"])
        s.rng = np.random.Generator(bg())
        s.rng.bit_generator.state = st
        return s
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise StateError(f"saved state: bad sampler record ({e})") from None


# --- save / restore ----------------------------------------------------------------

def _geometry(kv):
    hp = kv.weights.hparams
    return hp["n_layers"], hp["n_kv_heads"] * hp["head_dim"], hp["n_vocab"]


def save_session(session):
    """The session's tokens, KV rows, last logits and sampler as bytes."""
    kv = session._kv
    n_layers, kv_dim, n_vocab = _geometry(kv)
    ev, pend = list(session._evaluated), list(session._pending)
    logits = session._logits
    samp = sampler_to_json(session.sampler) if session.sampler is not None else b""
    head = _HEAD.pack(MAGIC, VERSION, model_fingerprint(kv.weights),
                      lib.pq_ctx_kv_type(_ptr(kv)), n_layers, kv_dim, len(ev), len(pend),
                      n_vocab, 0 if logits is None else 1, len(samp))
    parts = [head, np.asarray(ev + pend, dtype="<i4").tobytes(), samp]
    if logits is not None:
        parts.append(np.asarray(logits, dtype="<f4").reshape(-1).tobytes())
    parts.append(kv_save(kv, len(ev)))
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def parse_state(data, kv):
    """Validate saved-state bytes against a session's KV cache; returns
    (evaluated, pending, logits or None, sampler or None, kv_bytes)."""
    data = bytes(data)
    if len(data) < _HEAD.size + _SUM:
        raise StateError(f"saved state: {len(data)} bytes is too short to be a session state")
    (magic, version, fp, kv_type, n_layers, kv_dim, n_ev, n_pend, n_vocab, has_logits,
     n_samp) = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise StateError("saved state: bad magic (not a pyllama-q session state)")
    if version != VERSION:
        raise StateError(f"saved state: version {version}, this build reads {VERSION}")
    body, digest = data[:-_SUM], data[-_SUM:]
    if hashlib.sha256(body).digest() != digest:
        raise StateError("saved state: checksum mismatch (the data is corrupt or truncated)")
    if fp != model_fingerprint(kv.weights):
        raise StateError("saved state: made with a different model (fingerprint mismatch)")
    my_layers, my_kv_dim, my_vocab = _geometry(kv)
    if (n_layers, kv_dim, n_vocab) != (my_layers, my_kv_dim, my_vocab):
        raise StateError(f"saved state: shape (layers {n_layers}, kv_dim {kv_dim}, vocab "
                         f"{n_vocab}) does not match the model")
    my_type = lib.pq_ctx_kv_type(_ptr(kv))
    if kv_type != my_type:
        names = {0: "f32", 1: "f16"}
        raise StateError(f"saved state: KV type {names.get(kv_type, kv_type)} but the session's "
                         f"cache is {names.get(my_type, my_type)}")
    if n_pend > 1 or has_logits > 1:
        raise StateError("saved state: bad header counts")
    n_ctx = lib.pq_ctx_n_ctx(_ptr(kv))
    if n_ev + n_pend > n_ctx:
        raise StateError(f"saved state: {n_ev + n_pend} tokens do not fit the session "
                         f"context of {n_ctx}")
    kv_n = lib.pq_ctx_kv_state_bytes(_ptr(kv), n_ev)
    want = _HEAD.size + 4 * (n_ev + n_pend) + n_samp + 4 * n_vocab * has_logits + kv_n
    if len(body) != want:
        raise StateError(f"saved state: {len(body)} bytes of data, expected {want}")
    at = _HEAD.size
    toks = np.frombuffer(data, dtype="<i4", count=n_ev + n_pend, offset=at).tolist()
    at += 4 * (n_ev + n_pend)
    if any(t < 0 or t >= n_vocab for t in toks):
        raise StateError("saved state: a token id is outside the vocabulary")
    sampler = sampler_from_json(data[at:at + n_samp]) if n_samp else None
    at += n_samp
    logits = None
    if has_logits:
        logits = np.frombuffer(data, dtype="<f4", count=n_vocab, offset=at).astype(np.float32)
        at += 4 * n_vocab
    return toks[:n_ev], toks[n_ev:], logits, sampler, data[at:at + kv_n]


def restore_session(session, data):
    """Load saved-state bytes (or a path) into a session; nothing changes if
    any check fails."""
    if isinstance(data, (str, os.PathLike)):
        with open(data, "rb") as f:
            data = f.read()
    ev, pend, logits, sampler, kv_bytes = parse_state(data, session._kv)
    kv_load(session._kv, len(ev), kv_bytes)
    session._evaluated, session._pending, session._logits = ev, pend, logits
    session.sampler = sampler
