"""compare.py: pyllama-q against llama.cpp, side by side, in one run.

    python -m benchmarks.compare [MODEL ...] [--threads 1,2] [--reps 3] [--rounds 2] [--md OUT.md]

MODEL is a .gguf path or a name from benchmarks.make_models (made on first
use); no MODEL means the standard set (re-quantized SmolLM2-135M, random
TinyLlama-1.1B and LLaMA-2-7B shapes).

For every model, thread count and engine a fresh worker process loads the file
(page cache warmed first, so load time is a warm load; by default in 2 MiB
folios, see --page-cache and pyllama_q/pagecache.py), then measures
  pp  one batch of PP prompt tokens at positions 0..PP-1 (default 512)
  tg  TG single-token steps at positions 0..TG-1 with greedy argmax (default 128)
each REPS times on an empty cache after one short warm-up, and reports the
median tokens/s, the load time and the peak RSS of that process. pyllama-q
also runs the tg loop inside C (pq_ctx_bench_decode) to show the Python cost.
A STREAM-like read test gives the memory bandwidth, and bandwidth / bytes of
weights read per token gives the decode roofline each engine is held against.

The machine's speed drifts (on a shared VM the read bandwidth was seen to move
between 20 and 50 GB/s within minutes), so the engines are measured in ROUNDS
that alternate their order (pq first, then llama.cpp first, ...), the read
test runs right before each round, and a ratio is the median of the per-round
ratios: each compares two measurements taken a minute apart, not two taken
at either end of the run.

What it is not: a test. It asserts nothing about speed; it prints numbers.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from pyllama_q.pagecache import mapped_kb, warm

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ENGINE_ORDER = ["pq", "llama.cpp"]
API_PAIRS = 4   # app API / C loop pairs per worker, at least
# Defaults by file size, so that a run of the standard set stays near 15
# minutes on 2 cores: (largest file bytes, pp, tg, reps). 7B is there for its
# memory-bound decode, so its prompt is shortened and it runs once.
TIERS = [(0.5e9, 512, 128, 3), (2e9, 512, 128, 2), (float("inf"), 128, 16, 1)]


# ---- worker: one engine, one model, one thread count -------------------------

def _vmrss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_worker(engine, path, threads, pp, tg, reps):
    """Measure in this process; return a dict (also used for 'not available')."""
    from benchmarks.engines import ENGINES, NotAvailable

    timer = time.perf_counter
    res = {"engine": engine, "threads": threads, "pp": pp, "tg": tg, "reps": reps}
    n_ctx = ((max(pp, tg + 8, 64) + 255) // 256) * 256
    res["base_rss_mb"] = _vmrss_mb()
    t0 = timer()
    try:
        eng = ENGINES[engine](path, threads, n_ctx)
    except NotAvailable as e:
        res["error"] = f"not available: {e}"
        return res
    res["load_s"] = timer() - t0
    res["version"] = eng.version
    for k in ("kernels", "system_info"):
        if hasattr(eng, k):
            res[k] = getattr(eng, k)

    # Same pseudo-random prompt on both engines (ids below 32000 exist in both vocabularies).
    rng = np.random.default_rng(1234)
    tokens = rng.integers(100, 31999, size=max(pp, 32)).astype(np.int32).tolist()
    first = tokens[0]

    # Warm-up, timed: the first evaluation pays for what a lazy (mmap) load left
    # undone (page faults on every weight, first touch of scratch).
    res["first_eval_s"] = eng.prefill(tokens[:32], timer)
    eng.decode(first, 2, timer)
    # CPU share = process CPU seconds / (wall seconds x threads): well below 1
    # means the run was preempted by other work on the machine (or its workers sleep).
    cpu = time.process_time

    def share(c0, wall):
        return (cpu() - c0) / (wall * threads) if wall > 0 else None

    if pp > 0:
        res["pp_s"], res["pp_cpu_share"] = [], []
        for _ in range(reps):
            c0 = cpu()
            dt = eng.prefill(tokens[:pp], timer)
            res["pp_s"].append(dt)
            res["pp_cpu_share"].append(share(c0, dt))
    if tg > 0:
        res["tg_s"], res["tg_cpu_share"] = [], []
        with_c = hasattr(eng, "decode_c")
        for _ in range(reps):
            c0 = cpu()
            dt, toks = eng.decode(first, tg, timer)
            res["tg_s"].append(dt)
            res["tg_cpu_share"].append(share(c0, dt))
            if hasattr(eng, "last_in_c"):
                res.setdefault("tg_in_c_s", []).append(eng.last_in_c)
            if with_c:  # right after the Python loop, so both see the same machine load
                try:
                    c0 = cpu()
                    dt, ctoks = eng.decode_c(first, tg, timer)
                    res.setdefault("tgc_s", []).append(dt)
                    res.setdefault("tgc_cpu_share", []).append(share(c0, dt))
                    res["tgc_same_tokens"] = ctoks == toks
                except NotAvailable as e:
                    res["tgc_error"] = f"not available: {e}"
                    with_c = False
        res["tg_tokens"] = toks
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    got = mapped_kb(path)   # after the runs: what the engine's reads faulted in
    if got:
        res["map_kb"], res["map_huge_kb"] = got
    if tg > 0 and hasattr(eng, "decode_api") and "tgc_s" in res:
        # The app API (Session.generate, greedy) against the C loop, in pairs
        # run back to back so both see the same machine load, which goes first
        # alternating (no order bias), at least API_PAIRS of them: single pairs
        # spread +-15 % on this VM. After peak RSS: the API loads a second
        # mapping of the file.
        for i in range(max(reps, API_PAIRS)):
            for which in (("api", "c") if i % 2 == 0 else ("c", "api")):
                if which == "api":
                    per_tok, atoks = eng.decode_api(first, tg, timer)
                else:
                    dt, _ = eng.decode_c(first, tg, timer)
            res.setdefault("api_tok_s", []).append(per_tok)
            res.setdefault("api_c_tok_s", []).append(dt / tg)
        res["api_same_tokens"] = atoks == toks
    eng.close()
    return res


# ---- orchestration ------------------------------------------------------------

def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit():
    try:
        h = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                           capture_output=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True).stdout.strip()
        return h + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def stream_bandwidth(threads, mib=512, reps=5):
    """{threads: (best GB/s, median GB/s)} from benchmarks/stream_read.c."""
    from benchmarks.make_models import bench_dir

    exe = os.path.join(bench_dir(), "stream_read")
    src = os.path.join(HERE, "stream_read.c")
    if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(src):
        subprocess.run(["cc", "-O2", "-pthread", src, "-o", exe], check=True)
    out = {}
    for t in threads:
        r = subprocess.run([exe, str(t), str(mib), str(reps)], capture_output=True, text=True,
                           check=True)
        best, med = map(float, r.stdout.split())
        out[t] = (best, med)
    return out


def weight_bytes_per_token(path):
    """Bytes of weights one decode step reads: every tensor once, except the
    token embedding table, of which one row is read (unless it doubles as the
    output matrix). The KV cache (small at tg128) is left out."""
    import gguf

    r = gguf.GGUFReader(path)
    names = {t.name for t in r.tensors}
    total = 0
    for t in r.tensors:
        if t.name == "token_embd.weight" and "output.weight" in names:
            total += t.n_bytes // int(t.shape[-1])   # one row
        else:
            total += t.n_bytes
    return total


def run_one(engine, path, threads, pp, tg, reps, timeout):
    cmd = [sys.executable, "-m", "benchmarks.compare", "--worker", engine, path,
           "--threads", str(threads), "--pp", str(pp), "--tg", str(tg), "--reps", str(reps)]
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"engine": engine, "threads": threads, "error": f"timed out after {timeout} s"}
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            if engine == "llama.cpp":   # what llama.cpp chose, from its log
                res["notes"] = ", ".join(
                    n for n, key in (("weights repacked (CPU_REPACK)", "CPU_REPACK model buffer"),
                                     ("flash attention", "FLASH_ATTN_EXT")) if key in r.stderr)
            return res
    last = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return {"engine": engine, "threads": threads,
            "error": f"worker failed (exit {r.returncode}): {last}"}


LIST_KEYS = ("pp_s", "pp_cpu_share", "tg_s", "tg_cpu_share", "tg_in_c_s", "tgc_s",
             "tgc_cpu_share", "api_tok_s", "api_c_tok_s")


def merge_rounds(results):
    """One result from the worker results of several rounds of one engine:
    timing lists concatenated, load and first-eval times the median over the
    rounds, peak RSS the largest; the first round's error, if any round failed."""
    for r in results:
        if "error" in r:
            return dict(r)
    out = dict(results[0])
    for k in LIST_KEYS:
        if any(k in r for r in results):
            out[k] = [x for r in results for x in r.get(k, [])]
    for k in ("load_s", "first_eval_s"):
        xs = [r[k] for r in results if r.get(k) is not None]
        if xs:
            out[k] = statistics.median(xs)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
    shares = [r["map_huge_kb"] / r["map_kb"] for r in results if r.get("map_kb")]
    if shares:   # the round that got the fewest 2 MiB pages
        out["map_huge_share"] = min(shares)
    for k in ("tgc_same_tokens", "api_same_tokens"):
        if any(k in r for r in results):
            out[k] = all(r.get(k, True) for r in results)
    out["rounds"] = len(results)
    return out


def round_ratios(row, key, n):
    """Per round: pq's median tokens/s over llama.cpp's, for key 'pp_s' or 'tg_s'."""
    out = []
    for rnd in row.get("rounds", []):
        a, b = rnd.get("pq", {}), rnd.get("llama.cpp", {})
        r = _ratio(_median_tps(a, key, n), _median_tps(b, key, n))
        if r is not None:
            out.append(r)
    return out


def roofline_pct(row, engine):
    """Median over rounds of an engine's tg weight bytes/s over the best read
    bandwidth measured right before that round, in %."""
    out = []
    for rnd, bw in zip(row.get("rounds", []), row.get("bw_rounds", [])):
        tps = _median_tps(rnd.get(engine, {}), "tg_s", row["tg"])
        if tps and bw:
            out.append(100 * tps * row["wbytes"] / (bw[0] * 1e9))
    return statistics.median(out) if out else None


def _median_tps(res, key, n):
    ts = res.get(key)
    return n / statistics.median(ts) if ts else None


def _per_cpu_tps(res, key, n):
    """Median over runs of n / (wall x CPU share): tokens/s had the process had
    its threads' cores to itself (spin-waiting counts as busy)."""
    xs = [n / (t * c) for t, c in zip(res.get(key + "_s") or [], res.get(key + "_cpu_share") or [])
          if c]
    return statistics.median(xs) if xs else None


def _median(xs):
    xs = [x for x in (xs or []) if x is not None]
    return statistics.median(xs) if xs else None


def _fmt(x, spec=".1f"):
    return "n/a" if x is None else format(x, spec)


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def _agree(a, b):
    if not a or not b:
        return None
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def report(meta, rows, bw):
    """Markdown text of one run."""
    L = []
    L.append(f"- date: {meta['date']}")
    L.append(f"- CPU: {meta['cpu']} ({meta['n_cpus']} logical CPUs); "
             f"load average at start {meta['loadavg']}")
    L.append(f"- commit: {meta['commit']}; llama-cpp-python {meta.get('lcp_version', 'n/a')}; "
             f"pyllama-q kernels: {meta.get('pq_kernels', 'n/a')}")
    if meta.get("lcp_system_info"):
        L.append(f"- llama.cpp build: {meta['lcp_system_info']}")
    L.append(f"- command: `{meta['command']}`")
    L.append(f"- wall time of the run: {meta['wall_s']:.0f} s")
    if bw:
        L.append("- read bandwidth (stream_read.c, 512 MiB, measured before every round; best of "
                 "5 / median of those 5, from the measurement with the highest best; '% roofline' "
                 "uses the best of the measurement right before each round): " + "; ".join(
            f"{t} thread{'s' if t > 1 else ''}: {b:.1f} / {m:.1f} GB/s" for t, (b, m) in bw.items()))
    L.append("")
    L.append("| model | weights/token | thr | engine | load + 1st eval s | peak RSS MB | pp t/s | tg t/s "
             "| pp t/s per CPU | tg t/s per CPU | tg % roofline | tg in C t/s | CPU share pp/tg |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        m, thr, pp, tg = row["model"], row["threads"], row["pp"], row["tg"]
        roof = bw[thr][0] * 1e9 / row["wbytes"] if bw and thr in bw else None
        n_rounds = len(row.get("rounds", [])) or 1
        by = row["by_engine"]
        stats = {}
        for eng in ENGINE_ORDER:
            res = by.get(eng)
            if res is None:
                continue
            label = f"{m} (pp{pp}/tg{tg}, {row['reps']} reps x {n_rounds} rounds)"
            head = f"| {label} | {row['wbytes'] / 1e6:.0f} MB | {thr} | {eng} "
            if "error" in res:
                L.append(head + "| " + res["error"] + " |" * 12)
                continue
            st = stats[eng] = {
                "load": res["load_s"], "rss": res["peak_rss_mb"],
                "pp": _median_tps(res, "pp_s", pp), "tg": _median_tps(res, "tg_s", tg),
                "ppn": _per_cpu_tps(res, "pp", pp), "tgn": _per_cpu_tps(res, "tg", tg)}
            first = res.get("first_eval_s")
            pct = roofline_pct(row, eng)
            if pct is None and roof:   # a saved run from before rounds: the run's best
                pct = 100 * st["tg"] / roof if st["tg"] else None
            L.append(head + f"| {st['load']:.2f}{'' if first is None else f' + {first:.2f}'} "
                     f"| {st['rss']:.0f} | {_fmt(st['pp'])} "
                     f"| {_fmt(st['tg'])} | {_fmt(st['ppn'])} | {_fmt(st['tgn'])} "
                     f"| {_fmt(pct, '.0f')} "
                     f"| {_fmt(_median_tps(res, 'tgc_s', tg))} "
                     f"| {_fmt(_median(res.get('pp_cpu_share')), '.2f')}/"
                     f"{_fmt(_median(res.get('tg_cpu_share')), '.2f')} |")
        if len(stats) == 2:
            a, b = stats["pq"], stats["llama.cpp"]
            rat = {k: _ratio(a[k], b[k]) for k in ("load", "rss", "pp", "tg", "ppn", "tgn")}
            for k, key, n in (("pp", "pp_s", pp), ("tg", "tg_s", tg)):
                rr = round_ratios(row, key, n)
                if rr:   # the median of per-round ratios (see the module docstring)
                    rat[k] = statistics.median(rr)
            L.append(f"| {m} | | {thr} | **pq / llama.cpp** | " + " | ".join(
                _fmt(rat[k], ".2f") for k in ("load", "rss", "pp", "tg", "ppn", "tgn"))
                + " | | | |")
    L.append("")
    # Per-round ratios, Python overhead and agreement of the greedy continuations.
    notes = []
    for row in rows:
        if len(row.get("rounds", [])) > 1:
            parts = []
            for k, key, n in (("pp", "pp_s", row["pp"]), ("tg", "tg_s", row["tg"])):
                rr = round_ratios(row, key, n)
                if rr:
                    parts.append(f"{k} " + ", ".join(f"{r:.2f}" for r in rr))
            bws = ", ".join(f"{b:.1f}" for b, _ in row.get("bw_rounds", []))
            notes.append(f"- {row['model']}, {row['threads']} thr: pq / llama.cpp per round: "
                         + "; ".join(parts) + (f" (read bandwidth before each round, best of 5: "
                                               f"{bws} GB/s)" if bws else ""))
        a, b = row["by_engine"].get("pq", {}), row["by_engine"].get("llama.cpp", {})
        if a.get("tg_s") and a.get("tgc_s"):
            tg, thr = row["tg"], row["threads"]
            py = statistics.median(a["tg_s"]) / tg
            c = statistics.median(a["tgc_s"]) / tg
            text = (f"- {row['model']}, {thr} thr: Python loop {py * 1e3:.2f} ms/token, "
                    f"C loop {c * 1e3:.2f} ms/token (wall, separate runs: machine noise "
                    f"included)")
            notes.append(text + f"; same tokens: {a.get('tgc_same_tokens')}")
        if a.get("tg_in_c_s"):   # same run: loop time minus time inside pq_ctx_eval
            over = [(t - c) / row["tg"] for t, c in zip(a["tg_s"], a["tg_in_c_s"])]
            per = statistics.median(over)
            notes.append(f"- {row['model']}, {row['threads']} thr: Python side of a decode step "
                         f"(loop minus time inside pq_ctx_eval, median): {per * 1e6:.0f} us/token, "
                         f"{100 * per * row['tg'] / statistics.median(a['tg_s']):.1f} % of the step")
        elif a.get("tgc_error"):
            notes.append(f"- {row['model']}, {row['threads']} thr: C step loop {a['tgc_error']}")
        if a.get("api_tok_s"):   # pairs measured back to back
            ratios = [p / c for p, c in zip(a["api_tok_s"], a["api_c_tok_s"])]
            notes.append(f"- {row['model']}, {row['threads']} thr: app API (Session.generate, "
                         f"greedy) {statistics.median(a['api_tok_s']) * 1e3:.2f} ms/token vs C loop "
                         f"{statistics.median(a['api_c_tok_s']) * 1e3:.2f}; API / C per pair "
                         f"{', '.join(f'{r:.3f}' for r in ratios)} (median "
                         f"{statistics.median(ratios):.3f}); same tokens: {a.get('api_same_tokens')}")
        if row.get("cache_huge") is not None and row["threads"] == rows[0]["threads"]:
            got = "; ".join(f"{e} {100 * r['map_huge_share']:.0f} %" for e, r in
                            (("pq", a), ("llama.cpp", b)) if r.get("map_huge_share") is not None)
            notes.append(f"- {row['model']}: page cache ({row['page_cache']}) "
                         f"{100 * row['cache_huge']:.0f} % of the file in 2 MiB folios; "
                         f"resident part of each engine's map of the file mapped with 2 MiB "
                         f"pages: {got or 'n/a'}")
        if b.get("notes") and row["threads"] == rows[0]["threads"]:
            notes.append(f"- {row['model']}: llama.cpp used {b['notes']}")
        n = _agree(a.get("tg_tokens"), b.get("tg_tokens"))
        if n is not None:
            notes.append(f"- {row['model']}, {row['threads']} thr: greedy tokens of the two engines "
                         f"agree for the first {n} of {row['tg']}")
    L += notes
    return "\n".join(L) + "\n"


def resolve(models):
    from benchmarks.make_models import DEFAULT_SET, MODELS, ensure

    out = []
    for m in models or DEFAULT_SET:
        if m in MODELS:
            out.append((m, ensure(m)))
        elif os.path.exists(m):
            out.append((os.path.basename(m).removesuffix(".gguf"), os.path.abspath(m)))
        else:
            raise SystemExit(f"{m}: no such file, and not one of {', '.join(MODELS)}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="GGUF paths or make_models names")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--pp", type=int, default=None,
                    help="prompt tokens in the one batch (default by file size, see TIERS)")
    ap.add_argument("--tg", type=int, default=None, help="tokens generated one at a time")
    ap.add_argument("--reps", type=int, default=None, help="runs per measurement")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds per model and thread count, engine order alternating")
    ap.add_argument("--engines", default="pq,llama.cpp")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per worker")
    ap.add_argument("--md", help="also write the markdown report to this file")
    ap.add_argument("--json", help="also write the raw results to this file")
    ap.add_argument("--no-stream", action="store_true", help="skip the bandwidth test")
    ap.add_argument("--page-cache", choices=("huge", "as-is"), default="huge",
                    help="before a model's runs, put its file in the page cache in 2 MiB folios "
                         "(as pyllama-q's map reads an uncached file; pyllama_q/pagecache.py) "
                         "or leave the cache as it is")
    ap.add_argument("--report-from", metavar="JSON", help="print the report of a saved --json run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")

    if args.report_from:
        with open(args.report_from) as f:
            saved = json.load(f)
        saved["meta"].setdefault("wall_s", float("nan"))
        bw = {int(t): tuple(v) for t, v in saved["bandwidth"].items()}
        print(report(saved["meta"], saved["rows"], bw))
        return

    if args.worker:
        res = run_worker(args.worker, args.models[0], int(args.threads), args.pp, args.tg,
                         args.reps)
        print("RESULT " + json.dumps(res), flush=True)
        return

    t_start = time.time()
    threads = [int(t) for t in args.threads.split(",")]
    engines = [e for e in ENGINE_ORDER if e in args.engines.split(",")]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(),
            "n_cpus": os.cpu_count(), "commit": git_commit(),
            "loadavg": " ".join(open("/proc/loadavg").read().split()[:3]),
            "command": "python -m benchmarks.compare " + " ".join(argv if argv is not None
                                                                 else sys.argv[1:])}
    bw = {}   # per thread count: the best read test of the run (the rounds run them)
    rows = []
    for name, path in resolve(args.models):
        size = os.path.getsize(path)
        _, pp, tg, reps = next(t for t in TIERS if size <= t[0])
        pp = args.pp if args.pp is not None else pp
        tg = args.tg if args.tg is not None else tg
        reps = args.reps if args.reps is not None else reps
        cache_huge = warm(path, huge=args.page_cache == "huge")["after"]
        wbytes = weight_bytes_per_token(path)
        for thr in threads:
            row = {"model": name, "path": path, "threads": thr, "pp": pp, "tg": tg,
                   "reps": reps, "wbytes": wbytes, "by_engine": {}, "rounds": [],
                   "bw_rounds": [], "page_cache": args.page_cache, "cache_huge": cache_huge}
            for rnd in range(args.rounds):
                if not args.no_stream:   # right before the round: the machine drifts
                    b, m = stream_bandwidth([thr])[thr]
                    row["bw_rounds"].append((b, m))
                    if thr not in bw or b > bw[thr][0]:   # the header keeps the best seen
                        bw[thr] = (b, m)
                order = engines if rnd % 2 == 0 else engines[::-1]
                results = {}
                for eng in order:
                    t0 = time.time()
                    res = results[eng] = run_one(eng, path, thr, pp, tg, reps, args.timeout)
                    if "system_info" in res:
                        meta["lcp_system_info"] = res["system_info"]
                    if "version" in res:
                        meta["lcp_version" if eng == "llama.cpp" else "pq_kernels"] = (
                            res["version"] if eng == "llama.cpp" else res.get("kernels"))
                    if "error" in res:
                        msg = res["error"]
                    else:
                        msg = (f"pp {_fmt(_median_tps(res, 'pp_s', pp))} t/s, "
                               f"tg {_fmt(_median_tps(res, 'tg_s', tg))} t/s, "
                               f"CPU share pp {_fmt(_median(res.get('pp_cpu_share')), '.2f')} "
                               f"tg {_fmt(_median(res.get('tg_cpu_share')), '.2f')}")
                    print(f"{name} thr={thr} round {rnd + 1}/{args.rounds} {eng}: {msg} "
                          f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
                row["rounds"].append(results)
            for eng in engines:
                row["by_engine"][eng] = merge_rounds([r[eng] for r in row["rounds"]])
            rows.append(row)
            if args.json:   # written after every row, so an interrupted run keeps its data
                with open(args.json, "w") as f:
                    json.dump({"meta": meta, "bandwidth": bw, "rows": rows}, f, indent=1)
    meta["wall_s"] = time.time() - t_start
    text = report(meta, rows, bw)
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "bandwidth": bw, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
