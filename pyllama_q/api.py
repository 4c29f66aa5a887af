"""The application API: load a model, open sessions, generate and chat.

    import pyllama_q
    with pyllama_q.load("model.gguf") as model:
        s = model.session()
        for chunk in s.generate("The capital of France is", max_tokens=20, temperature=0):
            print(chunk.text, end="", flush=True)
        print(model.chat([{"role": "user", "content": "Hi!"}], stream=False))

What it is: Model (weights + tokenizer + chat template, shared by sessions) and
Session (one KV cache and the tokens it holds). Generation evaluates only new
tokens: the prompt in n_batch chunks, then one token per step, never
re-tokenizing the context. What it is not: a server or a batch scheduler; one
session generates one sequence at a time.
"""
import os
import threading
import time
import weakref
from collections import Counter
from typing import NamedTuple

from .chat_template import from_metadata as _template_from_metadata
from .errors import CancelledError, ContextFullError, PQError
from .sampling import Sampler, SamplerParams
from ._closing import Closable

_SAMPLER_KEYS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n",
                 "logit_bias")


class Chunk(NamedTuple):
    """One step of a streamed generation: the text it released (possibly ""
    while text is held back, e.g. a possible start of a stop string) and the
    token sampled. token is -1 for held-back text released at the very end."""
    text: str
    token: int


class GenerationStats:
    """Counts and wall times of the last generate() of a session.
    finish: 'eog' (end-of-generation token), 'stop' (stop string), 'length'
    (max_tokens), 'context' (cache full), 'cancelled', 'closed' (the caller
    stopped iterating)."""

    def __init__(self):
        self.n_prompt = 0          # tokens evaluated before the first sample
        self.t_prompt = 0.0        # seconds
        self.n_gen = 0             # tokens sampled
        self.t_gen = 0.0           # seconds from first sample to the end
        self.finish = None

    @property
    def prompt_tps(self):
        return self.n_prompt / self.t_prompt if self.t_prompt > 0 else 0.0

    @property
    def gen_tps(self):
        return self.n_gen / self.t_gen if self.t_gen > 0 else 0.0

    def __repr__(self):
        return (f"GenerationStats(prompt {self.n_prompt} tok {self.prompt_tps:.1f} tok/s, "
                f"gen {self.n_gen} tok {self.gen_tps:.1f} tok/s, finish={self.finish})")


def load(path, n_threads=None, n_ctx=2048, kv_type="f16", n_batch=512, chat_template=None,
         progress=None):
    """Open a GGUF model. n_ctx is the default context of its sessions;
    chat_template overrides the file's (a built-in name or Jinja source).
    progress(fraction) is called while loading, ending with 1.0."""
    return Model(path, n_threads=n_threads, n_ctx=n_ctx, kv_type=kv_type, n_batch=n_batch,
                 chat_template=chat_template, progress=progress)


def _metadata_of(weights):
    md = getattr(weights, "metadata", None)
    if md is None:
        md = weights.gguf.metadata
    return md


class Model(Closable):
    """Weights, tokenizer and chat template; sessions share them."""

    def __init__(self, path, n_threads=None, n_ctx=2048, kv_type="f16", n_batch=512,
                 chat_template=None, progress=None):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        if os.path.isdir(path):
            raise PQError(f"{path}: is a directory, not a GGUF file")
        from .model import KVContext, Weights
        from .tokenizer import Detokenizer, Tokenizer

        # progress: tensors are 90% of the bar, the tokenizer the rest
        weights = Weights(path, n_threads=n_threads,
                          progress=None if progress is None else lambda f: progress(0.9 * f))
        try:
            md = _metadata_of(weights)
            tokenizer = Tokenizer.from_metadata(md)
            self._assemble(path, weights, tokenizer, md, KVContext, Detokenizer, n_ctx, kv_type,
                           n_batch, chat_template)
            if progress is not None:
                progress(1.0)
        except BaseException:
            weights.close()
            raise

    def _assemble(self, path, weights, tokenizer, md, kv_factory, detok_factory, n_ctx, kv_type,
                  n_batch, chat_template=None):
        """Wire the parts together (also used by tests with fake parts)."""
        self.path = path
        self.weights = weights
        self.tokenizer = tokenizer
        self.metadata = md
        self._kv_factory = kv_factory
        self._detok_factory = detok_factory
        self.n_ctx = int(n_ctx)
        self.kv_type = kv_type
        self.n_batch = int(n_batch)
        self.chat_template = _template_from_metadata(md, tokenizer, override=chat_template)
        self._chat_session = None
        self._sessions = weakref.WeakSet()
        self._turn_ids, self._turn_strings = self._turn_stops()
        return self

    # -- text <-> tokens --------------------------------------------------------------

    def tokenize(self, text, add_bos=None, special=False):
        """Token ids of text. add_bos None: the model's default. special: parse
        special-token text such as '<|im_end|>' into its id."""
        return list(self.tokenizer.encode(text, add_bos=add_bos, parse_special=special))

    def detokenize(self, ids):
        return self.tokenizer.decode(list(ids))

    @property
    def n_vocab(self):
        return self.tokenizer.n_vocab

    def _turn_stops(self):
        """Token ids and strings that end an assistant turn under the template."""
        ids = set(self.tokenizer.eog_ids)
        strings = list(self.chat_template.stop_strings)
        eot = self.chat_template.end_of_turn
        if eot:
            toks = self.tokenize(eot, add_bos=False, special=True)
            if len(toks) == 1:
                ids.add(toks[0])
            else:
                strings.append(eot)  # not one token in this vocab: match it as text
        return ids, strings

    # -- sessions ---------------------------------------------------------------------

    def session(self, n_ctx=None, context_shift=True, n_keep=None):
        """A new session with its own KV cache of n_ctx positions. When the
        cache fills during generation, context_shift keeps the first n_keep
        tokens (None: the BOS token, if any), drops the older half of the rest
        and goes on; context_shift=False raises ContextFullError instead."""
        if self.weights is None:
            raise PQError("model is closed")
        s = Session(self, n_ctx or self.n_ctx, context_shift=context_shift, n_keep=n_keep)
        self._sessions.add(s)
        return s

    def create_chat_completion(self, messages, **kw):
        """OpenAI-shaped chat completion (see pyllama_q.chat_api)."""
        from .chat_api import create_chat_completion
        return create_chat_completion(self, messages, **kw)

    def chat(self, messages, session=None, stream=True, max_tokens=512, stop=None, seed=None,
             **sampler):
        """Render `messages` with the chat template and generate the assistant's
        reply. The session (default: one the model keeps) re-evaluates only what
        differs from what its cache holds, so a growing conversation costs just
        its new turn. stream=True returns an iterator of Chunk, else the text."""
        if session is None:
            if self._chat_session is None:
                self._chat_session = self.session()
            session = self._chat_session
        prompt = self.chat_template.render(messages, add_generation_prompt=True)
        bos = self.chat_template.bos_token
        add_bos = False if bos and prompt.startswith(bos) else None
        tokens = self.tokenize(prompt, add_bos=add_bos, special=True)
        it = session._start(tokens, replace=True, max_tokens=max_tokens,
                            stop=list(stop or []) + self._turn_strings, seed=seed,
                            stop_ids=self._turn_ids, sampler=sampler)
        it = _lstrip_reply(it)
        return it if stream else "".join(c.text for c in it)

    # -- description --------------------------------------------------------------------

    def info(self):
        """A dict describing the model: architecture, sizes, tensor types,
        chat template and the kernels in use."""
        gg = getattr(self.weights, "gguf", None)
        tensors = getattr(gg, "tensors", None) or getattr(self.weights, "tensors", {}) or {}
        d = describe(self.metadata, tensors, self.chat_template)
        d["path"] = self.path
        d["n_ctx"] = self.n_ctx
        d["kv_type"] = self.kv_type
        d["n_threads"] = _n_threads_of(self.weights)
        return d

    def close(self):
        """Close every session (waiting for an evaluation in another thread to
        stop), then the weights."""
        for s in list(self._sessions):
            s.close()
        self._chat_session = None
        if self.weights is not None:
            self.weights.close()
            self.weights = None



def _lstrip_reply(chunks):
    """A reply starts at its first non-blank character (templates put the
    newline or space after the role header themselves)."""
    started = False
    for c in chunks:
        if not started:
            text = c.text.lstrip()
            if text:
                started = True
            c = Chunk(text, c.token)
        yield c


def _n_threads_of(weights):
    for name in ("n_threads",):
        v = getattr(weights, name, None)
        if v is not None:
            return v() if callable(v) else v
    return None


class Session(Closable):
    """One KV cache. `tokens` is the sequence the session stands for: what the
    cache holds, plus at most one last sampled token that is evaluated lazily
    (when generation continues), so stopping costs no extra forward step."""

    def __init__(self, model, n_ctx, context_shift=True, n_keep=None):
        self.model = model
        self.n_ctx = int(n_ctx)
        self.context_shift = bool(context_shift)
        self.n_keep = n_keep        # tokens a context shift keeps (None: the BOS, if any)
        self.sampler = None         # the Sampler of the last generation (resume=True reuses it)
        self.n_shifts = 0           # context shifts so far
        self._generating = threading.Lock()  # held while a generation runs
        self._kv = model._kv_factory(model.weights, self.n_ctx, n_batch=model.n_batch,
                                     kv_type=model.kv_type)
        self._evaluated = []        # token ids whose K/V the cache holds, positions 0..
        self._pending = []          # sampled, not yet evaluated (0 or 1 token)
        self._logits = None         # logits after the last evaluated token
        self._cancel = False        # a cancel for the operation in progress
        self._stale_cancel = False  # a cancel that may still be armed in the C context
        self._n_evaluated = 0       # tokens run through the model, ever (for stats)
        self._busy = threading.Lock()  # held while the C context evaluates
        self.stats = GenerationStats()

    @property
    def tokens(self):
        return self._evaluated + self._pending

    def reset(self):
        """Forget everything; the next evaluation starts at position 0."""
        self._evaluated, self._pending, self._logits = [], [], None

    def cancel(self):
        """Stop the evaluation or generation in progress (thread-safe; also
        safe from a signal handler). A generator ends with finish 'cancelled'."""
        self._cancel = True
        kv = self._kv
        if kv is not None:
            kv.cancel()

    def close(self):
        """Free the KV cache; an evaluation running in another thread is
        cancelled and waited for first."""
        if self._kv is not None:
            self.cancel()
            with self._busy:
                kv, self._kv = self._kv, None
                if kv is not None:
                    kv.close()

    @property
    def kv_bytes(self):
        """Bytes of this session's KV cache (both K and V, all layers)."""
        return self._kv.kv_bytes if self._kv is not None else 0

    # -- state --------------------------------------------------------------------------

    def save_state(self, path=None):
        """Tokens, KV cache rows, last logits and sampler state as bytes (see
        pyllama_q.state for the format); also written to `path` if given."""
        from .state import save_session
        with self._busy:
            data = save_session(self)
        if path is not None:
            with open(path, "wb") as f:
                f.write(data)
        return data

    def load_state(self, data):
        """Restore what save_state() returned (bytes or a path) into this
        session; StateError if it comes from another model or is corrupt.
        Continue with generate(..., resume=True) to reuse the saved sampler."""
        from .state import restore_session
        with self._busy:
            restore_session(self, data)

    def _n_keep_now(self):
        """The tokens a shift would keep now (n_keep, or the BOS if None)."""
        n_keep = self.n_keep
        if n_keep is None:
            bos = getattr(self.model.tokenizer, "bos_id", None)
            n_keep = 1 if self._evaluated and self._evaluated[0] == bos else 0
        return max(0, min(int(n_keep), len(self._evaluated)))

    def _shift_context(self):
        """Free room in a full cache: keep n_keep tokens, drop the older half
        of the rest (re-rotating the kept keys in C). False if shifting is off
        or impossible."""
        from .state import kv_shift
        n_used = len(self._evaluated)
        n_keep = self._n_keep_now()
        n_discard = (n_used - n_keep) // 2
        if not self.context_shift or n_discard <= 0:
            return False
        kv_shift(self._kv, n_keep, n_discard, n_used)
        self._evaluated = self._evaluated[:n_keep] + self._evaluated[n_keep + n_discard:]
        self.n_shifts += 1
        return True


    # -- evaluation ---------------------------------------------------------------------

    def _begin(self):
        # A cancel() that arrived after the last evaluation finished is still
        # armed in C and would hit our next eval: remember to absorb it once.
        self._stale_cancel = self._stale_cancel or self._cancel
        self._cancel = False

    def _eval_chunk(self, toks, pos):
        with self._busy:
            kv = self._kv
            if kv is None:
                raise PQError("session is closed")
            try:
                return kv.eval(toks, pos)
            except CancelledError:
                if self._stale_cancel and not self._cancel:
                    self._stale_cancel = False
                    return kv.eval(toks, pos)
                raise
            finally:
                self._stale_cancel = False

    def _eval_tokens(self, toks, progress=None):
        """Append the pending token and toks to the cache in n_batch chunks;
        returns the last logits. On cancel the chunks done so far stay valid
        (and `tokens` says so). progress(done, total) is called after each
        chunk."""
        toks = self._pending + [int(t) for t in toks]
        if not toks:
            return self._logits
        if len(self._evaluated) + len(toks) > self.n_ctx:
            raise ContextFullError(f"{len(self._evaluated)} + {len(toks)} tokens do not fit "
                                   f"the session context of {self.n_ctx}")
        nb = self.model.n_batch
        for i in range(0, len(toks), nb):
            chunk = [int(t) for t in toks[i:i + nb]]
            if self._cancel:
                raise CancelledError("evaluation cancelled")
            prev, self._logits = self._logits, None  # the cache changes below
            try:
                logits = self._eval_chunk(chunk, len(self._evaluated))
            except CancelledError:
                # positions before this chunk are intact, so their logits
                # still apply: a cancelled session can go on from there
                self._logits = prev
                raise
            self._evaluated.extend(chunk)
            self._pending = []  # it was first in the first chunk
            self._n_evaluated += len(chunk)
            self._logits = logits
            if progress is not None:
                progress(min(i + nb, len(toks)), len(toks))
        return self._logits

    def eval(self, tokens, progress=None):
        """Append tokens at the current position; returns the logits (n_vocab,)
        after the last one. progress(done, total) after each n_batch chunk."""
        self._begin()
        return self._eval_tokens(tokens, progress)

    def _sync(self, target, progress=None):
        """Make the cache hold exactly `target` (keeping the longest common
        prefix), leaving the logits after its last token."""
        target = [int(t) for t in target]
        if not target:
            raise PQError("empty prompt")
        if len(target) > self.n_ctx:
            raise ContextFullError(f"prompt of {len(target)} tokens does not fit the "
                                   f"session context of {self.n_ctx}")
        n = 0
        lim = min(len(self._evaluated), len(target) - 1)  # re-evaluate >= 1 token for logits
        while n < lim and self._evaluated[n] == target[n]:
            n += 1
        self._evaluated, self._pending = self._evaluated[:n], []
        return self._eval_tokens(target[n:], progress)

    # -- generation ---------------------------------------------------------------------

    def generate(self, prompt=None, tokens=None, max_tokens=256, stop=None, seed=None,
                 stop_ids=None, resume=False, progress=None, **sampler):
        """Stream a continuation of what the session holds plus `prompt` (text)
        or `tokens`. Sampler settings (temperature, top_k, top_p, min_p,
        repeat_penalty, repeat_last_n, logit_bias) as in SamplerParams.
        Stops at an end-of-generation token, a `stop` string (never emitted),
        max_tokens, a full context (if context_shift is off), or cancel().
        resume=True continues with the session's last sampler (settings and
        random state, e.g. restored by load_state) instead of a new one.
        progress(done, total) is called after each prompt chunk. Returns an
        iterator of Chunk; `self.stats` describes the run when it ends."""
        if prompt is not None and tokens is not None:
            raise PQError("give prompt or tokens, not both")
        new = []
        if prompt is not None:
            empty = not self._evaluated and not self._pending
            new = self.model.tokenize(prompt, add_bos=None if empty else False)
        elif tokens is not None:
            new = [int(t) for t in tokens]
        if not new and not self._pending and self._logits is None:
            raise PQError("nothing to continue: give a prompt or tokens")
        ids = set(self.model.tokenizer.eog_ids) | set(stop_ids or ())
        return self._start(new, replace=False, max_tokens=max_tokens, stop=stop, seed=seed,
                           stop_ids=ids, sampler=sampler, resume=resume, progress=progress)

    def generate_text(self, prompt=None, tokens=None, **kw):
        """generate(), joined into one string."""
        return "".join(c.text for c in self.generate(prompt, tokens, **kw))

    def _start(self, new, replace, max_tokens, stop, seed, stop_ids, sampler, resume=False,
               progress=None):
        """Check arguments eagerly, then hand back the streaming generator."""
        unknown = set(sampler) - set(_SAMPLER_KEYS)
        if unknown:
            raise TypeError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
        if resume:
            if self.sampler is None:
                raise PQError("resume=True but the session has no sampler to resume")
            if sampler or seed is not None:
                raise PQError("resume=True reuses the saved sampler: give no sampler settings")
        params = self.sampler.params if resume else SamplerParams(seed=seed, **sampler).check()
        stops = [s for s in (stop or []) if s]
        n_total = len(new) + (0 if replace else len(self._evaluated) + len(self._pending))
        if n_total > self.n_ctx and not replace and self.context_shift:
            # appending: shifting can free all but the kept tokens
            n_total = self._n_keep_now() + len(self._pending) + len(new)
        if n_total > self.n_ctx:
            raise ContextFullError(f"prompt of {n_total} tokens does not fit the session "
                                   f"context of {self.n_ctx}")
        samp = self.sampler if resume else Sampler(params)
        return self._stream(new, replace, int(max_tokens), stops, set(stop_ids), samp, progress)

    def _stream(self, new, replace, max_tokens, stops, stop_ids, sampler, progress=None):
        # One generation at a time per session: a second one (another thread,
        # or an unfinished generator) would interleave two sequences in one cache.
        if not self._generating.acquire(blocking=False):
            raise PQError("session is busy with another generation (one at a time per "
                          "session; use one session per thread)")
        try:
            yield from self._stream_locked(new, replace, max_tokens, stops, stop_ids, sampler,
                                           progress)
        finally:
            self._generating.release()

    def _stream_locked(self, new, replace, max_tokens, stops, stop_ids, sampler, progress):
        st = self.stats = GenerationStats()
        self.sampler = sampler
        self._begin()
        t0 = time.perf_counter()
        try:
            n_before = self._n_evaluated
            if replace:
                logits = self._sync(new, progress)
            else:
                while (len(self._evaluated) + len(self._pending) + len(new) > self.n_ctx
                       and self._shift_context()):
                    pass  # make room for appended tokens (context_shift on)
                logits = self._eval_tokens(new, progress)
            st.n_prompt = self._n_evaluated - n_before
        except CancelledError:
            st.finish = "cancelled"
            return
        finally:
            st.t_prompt = time.perf_counter() - t0
        t1 = time.perf_counter()

        detok = self.model._detok_factory(self.model.tokenizer)
        if self._evaluated:
            # The first generated token continues the text, so it must not lose
            # a leading space as the start of a SentencePiece text would: prime
            # the detokenizer with the last prompt token, dropping its text.
            detok.feed(self._evaluated[-1])
        held = ""   # decoded text not yet released: a possible start of a stop string
        max_stop = max((len(s) for s in stops), default=0)
        try:
            while True:
                if self._cancel:
                    st.finish = "cancelled"
                    break
                if st.n_gen >= max_tokens:
                    st.finish = "length"
                    break
                if self._pending:  # evaluate the token sampled last step
                    if len(self._evaluated) >= self.n_ctx and not self._shift_context():
                        st.finish = "context"
                        raise ContextFullError(
                            f"the session context of {self.n_ctx} tokens is full and "
                            f"context_shift is off")
                    logits = self._eval_tokens([])
                tok = sampler.sample(logits, self._evaluated)
                st.n_gen += 1
                self._pending = [tok]
                if tok in stop_ids:
                    st.finish = "eog"
                    break
                held += detok.feed(tok)
                if stops:
                    cut = _find_stop(held, stops)
                    if cut is not None:
                        if cut:
                            yield Chunk(held[:cut], tok)
                        held = ""
                        st.finish = "stop"
                        break
                    keep = _stop_prefix_len(held, stops, max_stop)
                else:
                    keep = 0
                out, held = held[:len(held) - keep], held[len(held) - keep:]
                yield Chunk(out, tok)
        except CancelledError:
            st.finish = "cancelled"
        finally:
            st.t_gen = time.perf_counter() - t1
            if st.finish is None:  # the caller stopped iterating (GeneratorExit)
                st.finish = "closed"
        if st.finish in ("stop",):
            return
        tail = held + detok.flush()
        if stops:
            cut = _find_stop(tail, stops)
            if cut is not None:
                tail, st.finish = tail[:cut], "stop"
        if tail:
            yield Chunk(tail, -1)


def _find_stop(text, stops):
    """Index of the earliest stop string in text, or None."""
    best = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best):
            best = i
    return best


def _stop_prefix_len(text, stops, max_stop):
    """Length of the longest suffix of text that is a proper prefix of a stop
    string (text that must be held back until we know)."""
    for n in range(min(len(text), max_stop - 1), 0, -1):
        suffix = text[-n:]
        if any(s.startswith(suffix) for s in stops):
            return n
    return 0


# --- description (shared by Model.info and `pyllama-q info`) -------------------------

_FILE_TYPES = {
    0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 7: "MOSTLY_Q8_0",
    8: "MOSTLY_Q5_0", 9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S",
    12: "MOSTLY_Q3_K_M", 13: "MOSTLY_Q3_K_L", 14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M",
    16: "MOSTLY_Q5_K_S", 17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K", 32: "MOSTLY_BF16",
}

_HPARAMS = (("n_layer", "block_count"), ("n_embd", "embedding_length"),
            ("n_ff", "feed_forward_length"), ("n_head", "attention.head_count"),
            ("n_head_kv", "attention.head_count_kv"), ("n_ctx_train", "context_length"),
            ("n_rot", "rope.dimension_count"), ("rope_freq_base", "rope.freq_base"),
            ("rms_eps", "attention.layer_norm_rms_epsilon"), ("n_vocab", "vocab_size"))


def _plain(v):
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def describe(md, tensors, template=None):
    """A dict describing a model from its metadata and tensor table."""
    from . import cpu_info
    from .gguf import type_name

    arch = md.get("general.architecture", "?")
    hp = {}
    for key, suffix in _HPARAMS:
        v = md.get(f"{arch}.{suffix}")
        if v is not None:
            hp[key] = _plain(v)
    if "n_vocab" not in hp and md.get("tokenizer.ggml.tokens") is not None:
        hp["n_vocab"] = len(md["tokenizer.ggml.tokens"])
    types = Counter(type_name(t.type) for t in tensors.values())
    n_params = 0
    for t in tensors.values():
        n = 1
        for d in t.shape:
            n *= int(d)
        n_params += n
    ft = md.get("general.file_type")
    if template is None:
        try:
            template = _template_from_metadata(md)
        except PQError:
            template = None
    return {
        "name": md.get("general.name", ""),
        "arch": arch,
        "hparams": hp,
        "n_params": n_params,
        "n_tensors": len(tensors),
        "tensor_bytes": sum(int(t.nbytes) for t in tensors.values()),
        "tensor_types": dict(sorted(types.items(), key=lambda kv: -kv[1])),
        "file_type": None if ft is None else _FILE_TYPES.get(int(ft), f"type {int(ft)}"),
        "tokenizer": md.get("tokenizer.ggml.model", ""),
        "chat_template": None if template is None else
        (template.name + (" (from file)" if template.from_file else " (built-in)")),
        "kernels": cpu_info(),
    }
