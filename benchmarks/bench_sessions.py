"""Sessions benchmark (not a test): tokens/s of one session generating alone
against two sessions of the same loaded model generating at once, each in its
own thread.

The C model runs one evaluation at a time (sessions queue on the model's
lock, and each evaluation uses the whole thread pool), so two sessions are
expected to share the machine's throughput rather than add to it; what the
ratio shows is how much of one session's Python work (sampling, detokenizing)
the other session's forward steps hide. The two measurements alternate, so
a change of load on a shared machine hits both.

    .venv/bin/python benchmarks/bench_sessions.py [MODEL.gguf] [-n 64] [--reps 3]
"""
import argparse
import os
import statistics
import threading
import time

import pyllama_q

KW = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=1)


def gen(model, prompt, n, bias):
    s = model.session(n_ctx=256)
    got = sum(1 for _ in s.generate(prompt, max_tokens=n, logit_bias=bias, **KW))
    s.close()
    return got


def one(model, n, bias):
    t0 = time.perf_counter()
    k = gen(model, "Once upon a time", n, bias)
    return k / (time.perf_counter() - t0)


def two(model, n, bias):
    counts = [0, 0]

    def run(i, p):
        counts[i] = gen(model, p, n, bias)
    ts = [threading.Thread(target=run, args=(i, p))
          for i, p in enumerate(["Once upon a time", "The best way to cook rice is"])]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("-n", type=int, default=64, help="tokens per session")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-t", "--threads", type=int, default=None)
    a = ap.parse_args()
    path = a.model
    if path is None:
        from pyllama_q.sample import sample_model_path
        path = sample_model_path(quiet=True)
    with pyllama_q.load(path, n_threads=a.threads) as m:
        bias = {i: -100.0 for i in m.tokenizer.eog_ids}  # every run makes n tokens
        gen(m, "Hi", 4, bias)  # warm-up: page in the weights
        r1, r2 = [], []
        for _ in range(a.reps):  # interleaved, so a load change hits both
            r1.append(one(m, a.n, bias))
            r2.append(two(m, a.n, bias))
        t1, t2 = statistics.median(r1), statistics.median(r2)
        print(f"model {os.path.basename(path)}, {m.weights.n_threads} threads, "
              f"{a.n} tokens per session, median of {a.reps}")
        print(f"one session : {t1:7.1f} tok/s")
        print(f"two sessions: {t2:7.1f} tok/s total ({t2 / 2:.1f} each), "
              f"ratio two/one {t2 / t1:.2f}")


if __name__ == "__main__":
    main()
