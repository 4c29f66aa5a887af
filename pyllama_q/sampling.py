"""Token sampling: logits (n_vocab,) float32 -> one token id.

What it is: a small numpy sampler with its own seeded `np.random.Generator`
(the same seed and the same logits give the same tokens), applying in order

    logit bias -> repetition penalty -> top-k -> softmax(logits / T) -> top-p -> min-p -> draw

Greedy decoding (temperature <= 0) is the argmax after bias and penalty.
What it is not: a grammar/constrained sampler, or mirostat/typical/DRY.

Cost per token: top-k selection is O(n_vocab) (a threshold from a 1/8
subsample, then an exact partition of the few hundred entries above it; no
sort of a 128k vocabulary); the sort, softmax and cumulative sums run on the k
survivors only. With top_k <= 0 the whole vocabulary is sorted.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np


@dataclass
class SamplerParams:
    """Sampling settings. A value that disables a stage: top_k <= 0,
    top_p >= 1, min_p <= 0, repeat_penalty == 1, temperature <= 0 (greedy)."""
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64        # how many recent tokens the penalty looks at; -1 = all
    seed: Optional[int] = None     # None: fresh entropy from the OS
    logit_bias: Dict[int, float] = field(default_factory=dict)  # token id -> added to its logit

    @property
    def greedy(self):
        return self.temperature <= 0

    def check(self):
        """Raise ValueError naming the first setting out of range."""
        if self.top_p <= 0 or self.top_p > 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p < 0 or self.min_p > 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repeat_penalty <= 0:
            raise ValueError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        return self


class Sampler:
    """Stateful only through its random generator: `sample(logits, history)`."""

    def __init__(self, params=None, **overrides):
        p = params if params is not None else SamplerParams()
        if overrides:
            p = SamplerParams(**{**p.__dict__, **overrides})
        self.params = p.check()
        self.rng = np.random.default_rng(p.seed)

    def reseed(self, seed):
        self.rng = np.random.default_rng(seed)

    # -- the stages -----------------------------------------------------------------

    def adjusted_logits(self, logits, history=()):
        """Logits (n_vocab,) after logit bias and repetition penalty, as a new
        float32 array (the caller's array is never modified)."""
        p = self.params
        x = np.array(logits, dtype=np.float32, copy=True).reshape(-1)
        if p.logit_bias:
            ids = np.fromiter(p.logit_bias.keys(), dtype=np.int64)
            vals = np.fromiter(p.logit_bias.values(), dtype=np.float32)
            ok = (ids >= 0) & (ids < x.size)
            x[ids[ok]] += vals[ok]
        if p.repeat_penalty != 1.0 and p.repeat_last_n != 0 and len(history):
            recent = history if p.repeat_last_n < 0 else history[-p.repeat_last_n:]
            ids = np.unique(np.asarray(recent, dtype=np.int64))
            ids = ids[(ids >= 0) & (ids < x.size)]
            # llama.cpp's rule: make a seen token less likely whatever its sign,
            # dividing a positive logit and multiplying a negative one.
            v = x[ids]
            x[ids] = np.where(v > 0, v / p.repeat_penalty, v * p.repeat_penalty)
        return x

    def candidates(self, logits, history=()):
        """The distribution the draw uses: (ids int64, probs float64), ids in
        descending probability, probs summing to 1. For greedy, ([argmax], [1])."""
        p = self.params
        x = self.adjusted_logits(logits, history)
        if p.greedy:
            return np.array([int(np.argmax(x))], dtype=np.int64), np.ones(1)

        # top-k: O(n) selection; only the k survivors get sorted.
        n = x.size
        if 0 < p.top_k < n:
            ids = _top_k_ids(x, p.top_k)
        else:
            ids = np.arange(n)
        ids = ids[np.argsort(-x[ids], kind="stable")]
        z = x[ids].astype(np.float64) / p.temperature
        z -= z[0]                      # max is first: exp never overflows
        probs = np.exp(z)
        probs /= probs.sum()

        # top-p: the smallest prefix whose mass reaches top_p (at least one token).
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1
            ids, probs = ids[:keep], probs[:keep]
            probs = probs / probs.sum()

        # min-p: drop tokens below min_p times the most likely one.
        if p.min_p > 0.0:
            keep = int(np.count_nonzero(probs >= p.min_p * probs[0]))
            ids, probs = ids[:max(keep, 1)], probs[:max(keep, 1)]
            probs = probs / probs.sum()
        return ids.astype(np.int64), probs

    def sample(self, logits, history: Sequence[int] = ()):
        """One token id (int) from logits (n_vocab,) given the tokens seen so far."""
        if self.params.greedy:
            tok = self._greedy_shortcut(logits)
            if tok is not None:
                return tok
        ids, probs = self.candidates(logits, history)
        if ids.size == 1:
            return int(ids[0])
        r = self.rng.random()
        i = int(np.searchsorted(np.cumsum(probs), r, side="right"))
        return int(ids[min(i, ids.size - 1)])

    def _greedy_shortcut(self, logits):
        """Greedy's token without copying the logits, or None to take the
        general path (which gives the same answer).

        Why: right after a decode step has streamed the weights through the
        caches, each numpy call on the fresh logits costs tens of us (cold
        caches), and copying them to add a bias was about 100 us of a 5 ms
        SmolLM2 step. Here: one argmax over the raw logits, then the few
        biased entries one by one (in float32, as adjusted_logits adds them;
        ties go to the lower id, as np.argmax's). It declines when a
        repetition penalty applies, when the raw argmax is itself biased (the
        best unbiased entry is then unknown) and on NaN."""
        p = self.params
        if p.repeat_penalty != 1.0 and p.repeat_last_n != 0:
            return None
        if not (isinstance(logits, np.ndarray) and logits.dtype == np.float32):
            return None
        x = logits.reshape(-1)
        best = int(np.argmax(x))
        bv = x[best]
        if bv != bv or best in p.logit_bias:
            return None
        if not p.logit_bias:
            return best
        # the same float32 conversion of the bias values as adjusted_logits'
        vals = np.fromiter(p.logit_bias.values(), dtype=np.float32, count=len(p.logit_bias))
        for i, b in zip(p.logit_bias.keys(), vals):
            i = int(i)
            if 0 <= i < x.size:
                v = x[i] + b
                if v != v:
                    return None
                if v > bv or (v == bv and i < best):
                    best, bv = i, v
        return best


def _top_k_ids(x, k):
    """Ids of the k largest entries of x (n,), in no particular order.

    A full argpartition of a 128k vocabulary costs several ms; instead the k-th
    largest of every 8th entry is a threshold t with at least k entries >= t,
    so every true top-k entry is >= t too. Only the few hundred entries >= t
    are then partitioned exactly. Cost: one comparison pass plus n/8 selection.
    """
    n = x.size
    if n < 64 * k:
        return np.argpartition(-x, k - 1)[:k]
    sub = x[::8]
    t = np.partition(sub, sub.size - k)[sub.size - k]
    cand = np.flatnonzero(x >= t)
    if cand.size <= k:
        return cand
    return cand[np.argpartition(-x[cand], k - 1)[:k]]
