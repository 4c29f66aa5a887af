"""The app API: generation logic on fake parts (fast), then on the real
sample model (slow)."""
import re
import threading

import numpy as np
import pytest

import pyllama_q
from pyllama_q.api import Model, _find_stop, _stop_prefix_len
from pyllama_q.errors import CancelledError, ContextFullError, PQError

# --- fakes: a byte-level tokenizer and a model that plays a script -----------------

SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
BOS, EOS, IM_START, IM_END = 256, 257, 258, 259
N_VOCAB = 260


class FakeTokenizer:
    bos_id, eos_id, n_vocab = BOS, EOS, N_VOCAB
    eog_ids = {EOS, IM_END}

    def encode(self, text, add_bos=None, parse_special=False):
        ids = [BOS] if add_bos in (None, True) else []
        parts = re.split("(" + "|".join(map(re.escape, SPECIALS)) + ")", text) if parse_special else [text]
        for part in parts:
            if part in SPECIALS and parse_special:
                ids.append(256 + SPECIALS.index(part))
            else:
                ids.extend(part.encode())
        return ids

    def token_bytes(self, i):
        return SPECIALS[i - 256].encode() if i >= 256 else bytes([i])

    def decode(self, ids):
        return b"".join(self.token_bytes(i) for i in ids if i < 256).decode("utf-8", "replace")

    def is_special(self, i):
        return i >= 256


class FakeDetokenizer:
    def __init__(self, tok):
        import codecs
        self.dec = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, i):
        return "" if i >= 256 else self.dec.decode(bytes([i]))

    def flush(self):
        return self.dec.decode(b"", final=True)


class FakeKV:
    """After evaluating position p the logits favour script[p - start] strongly,
    over seeded noise; records every eval. cancel() arms like the C context."""
    script = []
    start = 0

    def __init__(self, weights, n_ctx, n_batch=512, kv_type="f16"):
        self.n_ctx, self.n_batch = n_ctx, n_batch
        self.calls, self.armed = [], False
        self.cache = [None] * n_ctx

    def eval(self, tokens, pos, all_logits=False):
        assert 0 < len(tokens) <= self.n_batch and pos + len(tokens) <= self.n_ctx
        assert all(self.cache[i] is not None for i in range(pos)), "gap in cache"
        if self.armed:
            self.armed = False
            raise CancelledError("cancelled")
        self.calls.append((list(tokens), pos))
        for i, t in enumerate(tokens):
            self.cache[pos + i] = t
        last = pos + len(tokens) - 1
        x = np.random.default_rng(last).normal(size=N_VOCAB).astype(np.float32)
        k = last + 1 - FakeKV.start
        if 0 <= k < len(FakeKV.script):
            x[FakeKV.script[k]] += 10.0
        return x

    def cancel(self):
        self.armed = True

    def close(self):
        pass


class FakeWeights:
    def close(self):
        pass


def fake_model(script_text, prompt_len, template=None, n_ctx=256, n_batch=8, eos_at_end=True):
    FakeKV.script = list(script_text.encode()) + ([IM_END] if eos_at_end else [])
    FakeKV.start = prompt_len
    md = {"general.architecture": "llama", "tokenizer.ggml.tokens": [""] * 256 + SPECIALS,
          "tokenizer.ggml.bos_token_id": BOS, "tokenizer.ggml.eos_token_id": EOS}
    if template:
        md["tokenizer.chat_template"] = template
    return Model.__new__(Model)._assemble("fake.gguf", FakeWeights(), FakeTokenizer(), md,
                                          FakeKV, FakeDetokenizer, n_ctx, "f16", n_batch)


# --- stop-string helpers ------------------------------------------------------------

def test_stop_helpers():
    assert _find_stop("abc###x", ["##", "c#"]) == 2
    assert _find_stop("abc", ["d"]) is None
    assert _stop_prefix_len("hello ##", ["###"], 3) == 2
    assert _stop_prefix_len("hello #", ["###", "#!"], 3) == 1
    assert _stop_prefix_len("hello", ["###"], 3) == 0


# --- generation on fakes ------------------------------------------------------------

def test_greedy_plays_script_and_stops_at_eog():
    m = fake_model("Paris is nice.", prompt_len=1 + 5)
    s = m.session()
    chunks = list(s.generate("Hello", max_tokens=100, temperature=0))
    assert "".join(c.text for c in chunks) == "Paris is nice."
    assert s.stats.finish == "eog" and s.stats.n_gen == len("Paris is nice.") + 1
    assert s.stats.n_prompt == 6
    # prompt in chunks of n_batch=8, then one token per step, never re-evaluated
    calls = s._kv.calls
    assert [len(t) for t, _ in calls[:1]] == [6]
    assert all(len(t) == 1 for t, _ in calls[1:])
    assert [p for _, p in calls] == list(range(0, 1)) + list(range(6, 6 + len(calls) - 1))
    # the eog token is the lazily-held last token
    assert s.tokens[-1] == IM_END and len(s._evaluated) == len(s.tokens) - 1


def test_max_tokens_and_continuation():
    m = fake_model("abcdefghij", prompt_len=2)
    s = m.session()
    assert s.generate_text("x", max_tokens=4, temperature=0) == "abcd"
    assert s.stats.finish == "length"
    n_calls = len(s._kv.calls)
    # continuing evaluates only the one held token, then goes on with the script
    assert s.generate_text(max_tokens=3, temperature=0) == "efg"
    assert s._kv.calls[n_calls] == ([ord("d")], 5)


def test_stop_string_never_emitted_and_held_back_text_released():
    m = fake_model("one ## two ### three", prompt_len=2)
    s = m.session()
    chunks = list(s.generate("x", max_tokens=100, temperature=0, stop=["###"]))
    text = "".join(c.text for c in chunks)
    assert text == "one ## two " and s.stats.finish == "stop"
    # "##" was held back while it could start "###", then released with later text
    emitted = [c.text for c in chunks]
    assert "#" not in "".join(emitted[:4]) and any("##" in e for e in emitted)
    # a stop string that never occurs: everything comes out, including a held tail
    m = fake_model("abc ##", prompt_len=2)
    s = m.session()
    chunks = list(s.generate("x", max_tokens=100, temperature=0, stop=["###"]))
    assert "".join(c.text for c in chunks) == "abc ##" and chunks[-1].token == -1


def test_seeded_sampling_repeatable_and_seed_dependent():
    m = fake_model("z" * 40, prompt_len=2, eos_at_end=False)
    outs = []
    for seed in (1, 1, 2):
        s = m.session()
        outs.append(s.generate_text("x", max_tokens=40, temperature=3.0, top_k=0, top_p=1.0,
                                    min_p=0.0, seed=seed))
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_chat_reuses_cache_prefix():
    tmpl = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    m = fake_model("", prompt_len=0, template=tmpl)
    msgs = [{"role": "user", "content": "hi"}]
    p1 = m.tokenize(m.chat_template.render(msgs), special=True)
    FakeKV.script, FakeKV.start = list(b"yo") + [IM_END], len(p1)
    reply = m.chat(msgs, stream=False, temperature=0)
    assert reply == "yo"
    s = m._chat_session
    msgs += [{"role": "assistant", "content": reply}, {"role": "user", "content": "again"}]
    p2 = m.tokenize(m.chat_template.render(msgs), special=True)
    FakeKV.script, FakeKV.start = list(b"ok") + [IM_END], len(p2)
    before = len(s._kv.calls)
    assert m.chat(msgs, stream=False, temperature=0) == "ok"
    # second turn evaluated only the tokens after the shared prefix (the held
    # <|im_end|> sampled last turn is part of it)
    first_new = s._kv.calls[before]
    assert first_new[1] == len(p1) + 2
    assert s.stats.n_prompt == len(p2) - (len(p1) + 2)


def test_cancel_stops_generation_and_does_not_leak_into_next_run():
    m = fake_model("abcdefghijklmnop", prompt_len=2, eos_at_end=False)
    s = m.session()
    got = []
    for c in s.generate("x", max_tokens=100, temperature=0):
        got.append(c.text)
        if len(got) == 3:
            s.cancel()   # arms the fake C context too
    assert "".join(got) == "abc" and s.stats.finish == "cancelled"
    # the armed C-side cancel is absorbed: the next run works
    assert s.generate_text(max_tokens=2, temperature=0) == "de"
    assert s.stats.finish == "length"


def test_cancel_from_another_thread_during_prompt():
    m = fake_model("abc", prompt_len=2)
    s = m.session()
    s.cancel()
    t = threading.Thread(target=s.cancel)
    t.start(); t.join()
    # a cancel issued before generate() belongs to no run: it is absorbed
    assert s.generate_text("x", max_tokens=2, temperature=0) == "ab"


def test_context_full_and_bad_arguments():
    m = fake_model("abc", prompt_len=2, n_ctx=16)
    s = m.session()
    with pytest.raises(ContextFullError):
        s.generate("y" * 40)
    with pytest.raises(PQError):
        s.generate()
    with pytest.raises(TypeError, match="temprature"):
        s.generate("x", temprature=0.5)
    FakeKV.script, FakeKV.start = list(b"q" * 40), 2
    s = m.session(context_shift=False)  # with the shift off a full context is an error
    got = []
    with pytest.raises(ContextFullError, match="context_shift is off"):
        for c in s.generate("x", max_tokens=100, temperature=0):
            got.append(c.text)
    assert len("".join(got)) == 16 - 2 + 1 and s.stats.finish == "context"


def test_session_eval_appends_in_batches_and_reset():
    m = fake_model("", prompt_len=0, n_batch=4)
    s = m.session()
    s.eval(list(range(10)))
    assert [(len(t), p) for t, p in s._kv.calls] == [(4, 0), (4, 4), (2, 8)]
    assert s.tokens == list(range(10))
    s.reset()
    assert s.tokens == []


def test_load_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        pyllama_q.load(tmp_path / "nope.gguf")


# --- the real sample model ------------------------------------------------------------

SYSTEM = "You are a helpful AI assistant."


@pytest.fixture(scope="module")
def model(sample_model):
    pytest.importorskip("pyllama_q.model")
    pytest.importorskip("pyllama_q.tokenizer")
    m = pyllama_q.load(sample_model, n_ctx=512)
    yield m
    m.close()


@pytest.mark.slow
def test_real_greedy_is_deterministic(model):
    a = model.session().generate_text("The capital of France is", max_tokens=12, temperature=0)
    b = model.session().generate_text("The capital of France is", max_tokens=12, temperature=0)
    assert a == b and len(a.strip()) > 0


@pytest.mark.slow
def test_real_same_seed_same_text(model):
    kw = dict(max_tokens=16, temperature=1.0, top_k=40, top_p=0.95, min_p=0.0)
    a = model.session().generate_text("Once upon a time", seed=7, **kw)
    b = model.session().generate_text("Once upon a time", seed=7, **kw)
    assert a == b


@pytest.mark.slow
def test_real_stop_string(model):
    s = model.session()
    full = s.generate_text("List: one, two, three, four,", max_tokens=24, temperature=0)
    assert "," in full
    stop = full[full.index(","):full.index(",") + 1]
    s = model.session()
    cut = s.generate_text("List: one, two, three, four,", max_tokens=24, temperature=0, stop=[stop])
    assert cut == full[:full.index(stop)] and s.stats.finish == "stop"


@pytest.mark.slow
def test_real_chat_answers_paris_and_reuses_prefix(model):
    s = model.session()
    # With the template's default system prompt this Q4_1 model answers off
    # topic ("L'Etoile, la Cite, ...") in llama.cpp too; with this system prompt
    # llama.cpp (llama-cpp-python 0.3.36, greedy) answers "The capital of France is Paris."
    msgs = [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": "What is the capital of France?"}]
    reply = model.chat(msgs, session=s, stream=False, temperature=0, max_tokens=48)
    assert "Paris" in reply and s.stats.finish == "eog"
    n1 = len(s.tokens)
    msgs += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And Italy?"}]
    model.chat(msgs, session=s, stream=False, temperature=0, max_tokens=8)
    assert s.stats.n_prompt < len(s.tokens) - n1 + 40  # the first turn was not re-evaluated


@pytest.mark.slow
def test_real_info(model):
    info = model.info()
    assert info["arch"] == "llama" and info["hparams"]["n_layer"] == 30
    assert info["chat_template"] == "chatml (from file)"
    assert info["kernels"]["kernels"] == pyllama_q.cpu_info()["kernels"]
    assert "Q4_1" in info["tensor_types"]


@pytest.mark.slow
def test_real_cancel_from_another_thread_during_long_prompt(sample_model):
    pytest.importorskip("pyllama_q.model")
    with pyllama_q.load(sample_model, n_ctx=2048, n_batch=64) as m:
        s = m.session()
        prompt = m.tokenize("The quick brown fox jumps over the lazy dog. " * 150)
        assert len(prompt) > 1500
        timer = threading.Timer(0.3, s.cancel)
        timer.start()
        try:
            text = s.generate_text(tokens=prompt, max_tokens=4, temperature=0)
        finally:
            timer.cancel()
        assert text == "" and s.stats.finish == "cancelled"
        # whatever was evaluated is a prefix of the prompt, in whole chunks
        assert s.tokens == prompt[:len(s.tokens)] and len(s.tokens) % 64 == 0
        assert len(s.tokens) < len(prompt)
        # the session is usable afterwards and agrees with a fresh one
        s.reset()
        a = s.generate_text("The capital of France is", max_tokens=6, temperature=0)
        b = m.session().generate_text("The capital of France is", max_tokens=6, temperature=0)
        assert a == b and s.stats.finish in ("length", "eog")


@pytest.mark.slow
def test_real_close_while_another_thread_generates(sample_model):
    pytest.importorskip("pyllama_q.model")
    m = pyllama_q.load(sample_model, n_ctx=1024)
    s = m.session()
    started, result = threading.Event(), {}

    def work():
        try:
            for i, _ in enumerate(s.generate("Once upon a time", max_tokens=500, seed=1)):
                started.set()
            result["finish"] = s.stats.finish
        except PQError as e:
            result["error"] = str(e)
        started.set()

    t = threading.Thread(target=work)
    t.start()
    assert started.wait(60)
    m.close()          # must wait for the evaluation, not free memory under it
    t.join(60)
    assert not t.is_alive()
    assert result.get("finish") == "cancelled" or "closed" in result.get("error", "")
