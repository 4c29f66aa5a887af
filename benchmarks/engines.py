"""engines.py: the two engines behind one small interface, for benchmarks only.

Each engine loads one GGUF with a fixed thread count and offers:
    prefill(tokens)        one batch of len(tokens) at positions 0..n-1 on an
                           empty cache; only the last token's logits are made
    decode(first, n)       n single-token evaluations at positions 0..n-1 on an
                           empty cache, each followed by a greedy argmax (numpy
                           on both sides) that picks the next token; returns them
    n_vocab, close()
pyllama-q adds decode_c(first, n): the same loop run by pq_ctx_bench_decode
entirely in C (argmax in C), to measure what the Python loop costs.

What it is not: a fair-weather wrapper. Both sides use f16 KV caches, one
sequence, the same thread count for batches and single tokens, and nothing
but the timed call inside the timed region.
"""
import numpy as np


class NotAvailable(Exception):
    """The engine cannot run here (not installed, not implemented yet)."""


class LlamaCpp:
    """llama.cpp through llama-cpp-python's low-level (ctypes) API."""

    name = "llama.cpp"

    def __init__(self, path, n_threads, n_ctx, n_batch=512):
        try:
            import llama_cpp as L
        except ImportError as e:
            raise NotAvailable(f"llama-cpp-python is not installed ({e})") from None
        self.L = L
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            raise RuntimeError(f"{path}: llama.cpp could not load the model")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch      # one 512-token batch is one ubatch, as in pyllama-q
        cp.n_seq_max = 1
        cp.n_threads = n_threads
        cp.n_threads_batch = n_threads
        cp.type_k = L.GGML_TYPE_F16
        cp.type_v = L.GGML_TYPE_F16
        cp.no_perf = False
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError(f"{path}: llama.cpp could not create a context")
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.batch = L.llama_batch_init(n_batch, 0, 1)
        self.mem = L.llama_get_memory(self.ctx)
        self.version = getattr(L, "__version__", "?")
        self.system_info = L.llama_print_system_info().decode().strip(" |")

    def _fill(self, tokens, pos0):
        b = self.batch
        n = len(tokens)
        for i, t in enumerate(tokens):
            b.token[i] = int(t)
            b.pos[i] = pos0 + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 0
        b.logits[n - 1] = 1
        b.n_tokens = n

    def _decode(self):
        rc = self.L.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _logits(self):
        p = self.L.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(p, shape=(self.n_vocab,))

    def clear(self):
        self.L.llama_memory_clear(self.mem, True)

    def prefill(self, tokens, timer):
        """Seconds for one batch of `tokens` (filled before the clock starts)."""
        self.clear()
        self._fill(tokens, 0)
        t0 = timer()
        self._decode()
        dt = timer() - t0
        self._logits()
        return dt

    def decode(self, first, n, timer):
        """(seconds, tokens) for n greedy single-token steps from position 0."""
        self.clear()
        b = self.batch
        b.n_tokens = 1
        b.n_seq_id[0] = 1
        b.seq_id[0][0] = 0
        b.logits[0] = 1
        out = []
        tok = int(first)
        t0 = timer()
        for pos in range(n):
            b.token[0] = tok
            b.pos[0] = pos
            self._decode()
            tok = int(np.argmax(self._logits()))
            out.append(tok)
        return timer() - t0, out

    def close(self):
        L = self.L
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)


def _find_ctx_pointer(kv):
    """The `pq_ctx *` cdata inside a pyllama_q KVContext, whatever it is named."""
    from pyllama_q._pq import ffi

    for v in vars(kv).values():
        if isinstance(v, ffi.CData) and ffi.typeof(v) is ffi.typeof("pq_ctx *"):
            return v
    return None


class _TimedLib:
    """Stands in for pyllama_q.model's `lib`: adds the wall time spent inside
    pq_ctx_eval to .in_c (two perf_counter calls, ~0.1 us, per call) and passes
    everything else through. Loop time minus in_c is the Python side's cost."""

    def __init__(self, lib, timer):
        self._lib, self._timer, self.in_c = lib, timer, 0.0

    def pq_ctx_eval(self, *args):
        t0 = self._timer()
        rc = self._lib.pq_ctx_eval(*args)
        self.in_c += self._timer() - t0
        return rc

    def __getattr__(self, name):
        return getattr(self._lib, name)


class PyllamaQ:
    """pyllama-q through its low-level API (pyllama_q.model)."""

    name = "pyllama-q"

    def __init__(self, path, n_threads, n_ctx, n_batch=512):
        try:
            from pyllama_q.model import KVContext, Weights
        except ImportError as e:
            raise NotAvailable(f"pyllama_q.model is not available yet ({e})") from None
        from pyllama_q.errors import UnsupportedError

        try:
            self.weights = Weights(path, n_threads=n_threads)
            self.kv = KVContext(self.weights, n_ctx, n_batch=n_batch, kv_type="f16")
        except UnsupportedError as e:
            raise NotAvailable(f"pyllama-q cannot run this yet ({e})") from None
        self.n_vocab = int(self.weights.n_vocab)
        import pyllama_q

        self.path, self.n_threads = path, n_threads
        self.kernels = pyllama_q.cpu_info()["kernels"]
        self.version = pyllama_q.__version__

    def _eval(self, tokens, pos):
        return self.kv.eval(tokens, pos)    # (n_vocab,) f32: the last token's logits

    def prefill(self, tokens, timer):
        toks = np.asarray(tokens, dtype=np.int32)
        t0 = timer()
        self._eval(toks, 0)
        return timer() - t0

    def decode(self, first, n, timer):
        import pyllama_q.model as pm

        timed = _TimedLib(pm.lib, timer)
        pm.lib = timed
        try:
            out = []
            tok = int(first)
            t0 = timer()
            for pos in range(n):
                tok = int(np.argmax(self._eval([tok], pos)))
                out.append(tok)
            dt = timer() - t0
        finally:
            pm.lib = timed._lib
        self.last_in_c = timed.in_c
        return dt, out

    def decode_c(self, first, n, timer):
        """(seconds, tokens) of the same greedy loop run inside C."""
        from pyllama_q._pq import ffi, lib

        if not hasattr(lib, "pq_ctx_bench_decode"):
            raise NotAvailable("this build has no pq_ctx_bench_decode")
        c = _find_ctx_pointer(self.kv)
        if c is None:
            raise NotAvailable("cannot find the pq_ctx pointer inside KVContext")
        buf = ffi.new("int32_t[]", n)
        t0 = timer()
        rc = lib.pq_ctx_bench_decode(c, self.n_vocab, int(first), 0, n, buf)
        dt = timer() - t0
        if rc != 0:
            raise RuntimeError(f"pq_ctx_bench_decode: {ffi.string(lib.pq_status_str(rc)).decode()}")
        return dt, list(buf)

    def decode_api(self, first, n, timer):
        """Seconds per generated token of the same greedy continuation through
        the app API (pyllama_q.load -> Session.generate: sampler, detokenizer,
        stop handling, Chunk objects), from stats.t_gen. The model is loaded
        on first use (a second mapping of the same file)."""
        import pyllama_q

        if getattr(self, "api_model", None) is None:
            self.api_model = pyllama_q.load(self.path, n_threads=self.n_threads,
                                            n_ctx=self.kv.n_ctx)
            # warm-up, untimed: the new mapping's page faults, as decode() had
            with self.api_model.session() as s:
                list(s.generate(tokens=[int(first)], max_tokens=2, temperature=0))
        m = self.api_model
        # never stop early at an end-of-generation token: n tokens, like decode()
        bias = {int(i): -1e30 for i in m.tokenizer.eog_ids}
        with m.session() as s:
            chunks = list(s.generate(tokens=[int(first)], max_tokens=n, temperature=0,
                                     logit_bias=bias))
            st = s.stats
        # n tokens are sampled but n - 1 evaluated (the prompt's logits give the
        # first): divide by n - 1, which can only overstate the API's cost
        return st.t_gen / max(st.n_gen - 1, 1), [c.token for c in chunks if c.token >= 0]

    def close(self):
        api = getattr(self, "api_model", None)
        if api is not None:
            api.close()
        for obj in (getattr(self, "kv", None), getattr(self, "weights", None)):
            close = getattr(obj, "close", None)
            if close:
                close()
        self.kv = self.weights = None


ENGINES = {"pq": PyllamaQ, "llama.cpp": LlamaCpp}
