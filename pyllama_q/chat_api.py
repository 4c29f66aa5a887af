"""The chat-completion layer in the shape llama-cpp-python and OpenAI clients
use: messages in, a completion dict (or an iterator of chunk dicts) out.

    out = model.create_chat_completion(messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=64, temperature=0)
    out["choices"][0]["message"]["content"]
    for ch in model.create_chat_completion(messages=msgs, stream=True):
        print(ch["choices"][0]["delta"].get("content", ""), end="")

What it is: argument mapping, the response shapes (id, object, created,
model, choices[{index, message|delta, logprobs, finish_reason}], usage) and
log-probabilities of the chosen tokens (log-softmax of the model's raw
logits, before temperature and the other sampler stages). What it is not:
a server, tools/function calling or several choices (n=1 only).
Generation, prefix reuse and context shift are the Session's (api.py).
"""
import time
import uuid

import numpy as np

# Session finish reasons -> OpenAI's. A cancelled reply ends like a stopped
# one (the session's stats.finish says "cancelled").
_FINISH = {"eog": "stop", "stop": "stop", "cancelled": "stop", "length": "length",
           "context": "length"}


def _token_entry(tokenizer, tid, logprob):
    raw = tokenizer.token_bytes(tid)
    return {"token": raw.decode("utf-8", "replace"), "logprob": float(logprob),
            "bytes": list(raw)}


def _logprobs_of(tokenizer, logits, tid, top_n):
    """The OpenAI logprobs record of token tid under logits (n_vocab,)."""
    x = np.asarray(logits, dtype=np.float64)
    mx = x.max()
    lse = mx + np.log(np.exp(x - mx).sum())
    entry = _token_entry(tokenizer, tid, x[tid] - lse)
    tops = []
    if top_n:
        k = min(int(top_n), x.size)
        ids = np.argpartition(-x, k - 1)[:k]
        ids = ids[np.argsort(-x[ids], kind="stable")]
        tops = [_token_entry(tokenizer, int(i), x[i] - lse) for i in ids]
    entry["top_logprobs"] = tops
    return entry


def create_chat_completion(model, messages, session=None, stream=False, max_tokens=None,
                           temperature=0.2, top_p=0.95, top_k=40, min_p=0.05,
                           repeat_penalty=1.0, seed=None, stop=None, logprobs=False,
                           top_logprobs=None, logit_bias=None):
    """A chat completion for `messages` (list of {"role", "content"}). With
    stream=False a "chat.completion" dict; with stream=True an iterator of
    "chat.completion.chunk" dicts (first delta carries the role, the last has
    finish_reason and usage). session: the Session to use (default: the one
    the model keeps for chat; use one session per thread). max_tokens None:
    up to the session's context size. logit_bias keys may be ints or strings."""
    if session is None:
        if model._chat_session is None:
            model._chat_session = model.session()
        session = model._chat_session
    if top_logprobs is not None and not 0 <= int(top_logprobs) <= 20:
        raise ValueError(f"top_logprobs must be in 0..20, got {top_logprobs}")
    if isinstance(stop, str):
        stop = [stop]
    bias = {int(k): float(v) for k, v in (logit_bias or {}).items()}
    prompt = model.chat_template.render(messages, add_generation_prompt=True)
    bos = model.chat_template.bos_token
    add_bos = False if bos and prompt.startswith(bos) else None
    tokens = model.tokenize(prompt, add_bos=add_bos, special=True)
    if max_tokens is None:
        max_tokens = session.n_ctx
    from .api import _lstrip_reply
    it = session._start(tokens, replace=True, max_tokens=max_tokens,
                        stop=list(stop or []) + model._turn_strings, seed=seed,
                        stop_ids=model._turn_ids,
                        sampler=dict(temperature=temperature, top_p=top_p, top_k=top_k,
                                     min_p=min_p, repeat_penalty=repeat_penalty,
                                     logit_bias=bias))
    meta = {"id": "chatcmpl-" + uuid.uuid4().hex, "created": int(time.time()),
            "model": model.metadata.get("general.name") or model.path}
    want_lp = bool(logprobs) or bool(top_logprobs)
    gen = _deltas(model, session, _lstrip_reply(it), want_lp, top_logprobs or 0)
    if stream:
        return _stream_chunks(meta, session, len(tokens), gen)
    return _whole(meta, session, len(tokens), gen, want_lp)


def _deltas(model, session, chunks, want_lp, top_n):
    """(text, logprob entry or None) per Chunk. While a Chunk is in hand the
    session's logits are those its token was drawn from (the token itself is
    evaluated lazily, at the next step)."""
    for c in chunks:
        lp = None
        if want_lp and c.token >= 0 and session._logits is not None:
            lp = _logprobs_of(model.tokenizer, session._logits, c.token, top_n)
        yield c.text, lp


def _usage(session, n_prompt):
    n_gen = session.stats.n_gen
    return {"prompt_tokens": n_prompt, "completion_tokens": n_gen,
            "total_tokens": n_prompt + n_gen,
            # the shared prefix the session already held (prefix reuse)
            "prompt_tokens_details": {"cached_tokens": n_prompt - session.stats.n_prompt}}


def _whole(meta, session, n_prompt, gen, want_lp):
    text, lps = [], []
    for t, lp in gen:
        text.append(t)
        if lp is not None:
            lps.append(lp)
    return {**meta, "object": "chat.completion",
            "choices": [{"index": 0,
                         "message": {"role": "assistant", "content": "".join(text)},
                         "logprobs": {"content": lps} if want_lp else None,
                         "finish_reason": _FINISH.get(session.stats.finish, "stop")}],
            "usage": _usage(session, n_prompt)}


def _stream_chunks(meta, session, n_prompt, gen):
    def chunk(delta, lp=None, finish=None, **extra):
        return {**meta, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta,
                             "logprobs": None if lp is None else {"content": [lp]},
                             "finish_reason": finish}], **extra}

    yield chunk({"role": "assistant", "content": ""})
    for text, lp in gen:
        if text or lp is not None:
            yield chunk({"content": text}, lp)
    yield chunk({}, finish=_FINISH.get(session.stats.finish, "stop"),
                usage=_usage(session, n_prompt))

