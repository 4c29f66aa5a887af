"""roofline.py: how close each engine's decode comes to the memory read bandwidth.

    python -m benchmarks.roofline MODEL [--threads 2] [--pairs 8] [--tokens N] [--json OUT]

compare.py gives every row a '% roofline', but from one read test per round and
a round lasts minutes; on a VM whose read bandwidth moves between ~15 and ~58
GB/s within seconds that figure is rough. Here each engine keeps one process
with the model loaded, and the run alternates short read tests with decodes:

    read, pq, read, llama.cpp, read, llama.cpp, read, pq, read, ...

(the engine order flips every pair). A decode of TOKENS greedy steps from an
empty cache (pyllama-q's loop inside C, llama.cpp's through its C API) is held
against the mean of the two read tests around it, so each figure compares
measurements a few seconds apart. It prints, as medians over the pairs:
  - each engine's weight bytes read per second as % of that bandwidth;
  - pq / llama.cpp tokens/s within a pair;
  - the ceiling of that ratio, 100 / llama.cpp's %: what pyllama-q would reach
    reading at the full measured bandwidth while llama.cpp stays where it is.

What it is not: a test, or a replacement for compare.py (no prompts, RSS or
load times). MODEL is a .gguf path or a benchmarks.make_models name.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ---- server: one engine, model loaded once, decodes on request ----------------

def serve(engine, path, threads, n_ctx):
    """Load, say READY, then answer each stdin line 'N' with one JSON line:
    the seconds and CPU share of N greedy decode steps from position 0."""
    from benchmarks.engines import ENGINES, NotAvailable

    try:
        e = ENGINES[engine](path, threads, n_ctx)
    except NotAvailable as err:
        print(f"UNAVAILABLE {err}", flush=True)
        return
    run = e.decode_c if engine == "pq" else e.decode
    run(1, 4, time.perf_counter)   # warm-up: page faults, thread start
    print("READY", flush=True)
    for line in sys.stdin:
        n = int(line)
        c0 = time.process_time()
        dt, _ = run(1, n, time.perf_counter)
        print(json.dumps({"s": dt, "cpu_share": (time.process_time() - c0) / dt / threads}),
              flush=True)


class Server:
    def __init__(self, engine, path, threads, n_ctx):
        self.engine = engine
        self.log = open(os.devnull, "w")
        self.p = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.roofline", path, "--serve", engine,
             "--threads", str(threads), "--tokens", str(n_ctx)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        first = self.p.stdout.readline().strip()
        if first != "READY":
            self.close()
            if first.startswith("UNAVAILABLE "):
                from benchmarks.engines import NotAvailable

                raise NotAvailable(first[len("UNAVAILABLE "):])
            raise RuntimeError(f"{engine}: the server did not start (exit {self.p.returncode})")

    def decode(self, n):
        self.p.stdin.write(f"{n}\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.engine}: the server stopped (exit {self.p.wait()})")
        return json.loads(line)

    def close(self):
        if self.p.stdin:
            self.p.stdin.close()
        self.p.wait()
        self.log.close()


# ---- the arithmetic (tested in tests/test_bench.py) ---------------------------

def summarize(samples, wbytes, tokens, engines):
    """samples: the run in time order, dicts {"read": GB/s} or {"engine": e,
    "s": seconds, "pair": i}. Each decode is held against the mean of the read
    tests just before and just after it. Returns {"pct": {engine: [%...]},
    "ratio": [pq/llama.cpp per pair], "ceiling": [100/llama.cpp % per pair]}."""
    pct = {e: {} for e in engines}
    for i, s in enumerate(samples):
        if "engine" not in s:
            continue
        before = next((x["read"] for x in reversed(samples[:i]) if "read" in x), None)
        after = next((x["read"] for x in samples[i + 1:] if "read" in x), None)
        reads = [r for r in (before, after) if r]
        if not reads:
            continue
        gbs = wbytes * tokens / s["s"] / 1e9
        pct[s["engine"]][s["pair"]] = 100 * gbs / statistics.mean(reads)
    out = {"pct": {e: [v for _, v in sorted(p.items())] for e, p in pct.items()},
           "ratio": [], "ceiling": []}
    if "pq" in pct and "llama.cpp" in pct:
        for i in sorted(set(pct["pq"]) & set(pct["llama.cpp"])):
            # the same weights per token: the ratio of tokens/s is the ratio of %
            out["ratio"].append(pct["pq"][i] / pct["llama.cpp"][i])
            out["ceiling"].append(100 / pct["llama.cpp"][i])
    return out


def _stats(xs, spec):
    if not xs:
        return "n/a"
    return (f"{format(statistics.median(xs), spec)} "
            f"({format(min(xs), spec)}-{format(max(xs), spec)})")


def report(name, threads, tokens, summary, reads, engines):
    lines = [f"{name}, {threads} thr, {tokens}-token decodes, {len(reads)} read tests: "
             f"read {_stats(reads, '.1f')} GB/s (median (min-max))"]
    for e in engines:
        lines.append(f"  {e:9s} % of read bandwidth: {_stats(summary['pct'][e], '.0f')}")
    if summary["ratio"]:
        lines.append(f"  pq / llama.cpp tokens/s per pair: {_stats(summary['ratio'], '.3f')}")
        lines.append(f"  ceiling of that ratio (100 / llama.cpp %): "
                     f"{_stats(summary['ceiling'], '.3f')}")
    return "\n".join(lines)


# ---- driver ---------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a GGUF path or a make_models name")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=8, help="decodes per engine")
    ap.add_argument("--tokens", type=int, default=None,
                    help="decode steps per measurement (default: ~16 GB of weights read, 16-128)")
    ap.add_argument("--engines", default="pq,llama.cpp")
    ap.add_argument("--json", help="also write the samples and summary to this file")
    ap.add_argument("--page-cache", choices=("huge", "as-is"), default="huge",
                    help="the model file's page-cache state, as in benchmarks.compare")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.serve:
        serve(args.serve, args.model, args.threads, args.tokens + 8)
        return
    if args.pairs < 1 or args.threads < 1 or (args.tokens is not None and args.tokens < 1):
        ap.error("--pairs, --threads and --tokens must be at least 1")

    from benchmarks.compare import git_commit, resolve, stream_bandwidth, weight_bytes_per_token
    from pyllama_q.pagecache import mapped_kb, warm

    (name, path), = resolve([args.model])
    engines = [e for e in ("pq", "llama.cpp") if e in args.engines.split(",")]
    if not engines:
        ap.error("--engines names none of pq, llama.cpp")
    cache_huge = warm(path, huge=args.page_cache == "huge")["after"]
    wbytes = weight_bytes_per_token(path)
    tokens = args.tokens or max(16, min(128, round(16e9 / wbytes)))
    from benchmarks.engines import NotAvailable

    servers = {}
    try:
        for e in engines:
            try:
                servers[e] = Server(e, path, args.threads, tokens)
            except NotAvailable as err:
                print(f"{e}: skipped ({err})", file=sys.stderr, flush=True)
        engines = [e for e in engines if e in servers]
        if not engines:
            raise SystemExit("roofline: no engine could run")
        samples = []

        def read():
            samples.append({"read": stream_bandwidth([args.threads], reps=3)[args.threads][0]})

        read()
        for i in range(args.pairs):
            for e in (engines if i % 2 == 0 else engines[::-1]):
                res = servers[e].decode(tokens)
                samples.append({"engine": e, "pair": i, **res})
                read()
                print(f"pair {i + 1}/{args.pairs} {e}: {tokens / res['s']:.2f} t/s, "
                      f"CPU share {res['cpu_share']:.2f}; read {samples[-1]['read']:.1f} GB/s",
                      file=sys.stderr, flush=True)
        maps = {e: mapped_kb(path, servers[e].p.pid) for e in engines}
    finally:
        for s in servers.values():
            s.close()
    summary = summarize(samples, wbytes, tokens, engines)
    reads = [s["read"] for s in samples if "read" in s]
    print(report(name, args.threads, tokens, summary, reads, engines))
    if cache_huge is not None:
        got = "; ".join(f"{e} {100 * h / r:.0f} %" for e, (r, h) in
                        ((e, m) for e, m in maps.items() if m and m[0]))
        print(f"  page cache ({args.page_cache}): {100 * cache_huge:.0f} % of the file in 2 MiB "
              f"folios; each engine's resident map of it in 2 MiB pages: {got or 'n/a'}")
    if args.json:
        meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(),
                "model": name, "threads": args.threads, "tokens": tokens, "wbytes": wbytes,
                "command": "python -m benchmarks.roofline " + " ".join(
                    argv if argv is not None else sys.argv[1:])}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "samples": samples, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
