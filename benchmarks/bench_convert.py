"""bench_convert.py: converter throughput and memory on a 1.1B-shaped model.

Generates a random TinyLlama-shaped checkpoint (dim 2048, 22 layers, 32 heads,
4 kv heads, ffn 5632, vocab 32000; bf16 safetensors in the HF layout, about
2.2 GB) in a temporary directory, then runs `python -m pyllama_q.convert
... --type q4_0` in a child process while sampling its memory from
/proc/<pid>/status. Prints input MB/s, the plain read speed of the same file
for comparison, and peak RSS split into anonymous memory (what the converter
allocates) and file-backed pages (the memory-mapped input, reclaimable page
cache).

Not a test: numbers depend on the machine and its load.
Usage: python benchmarks/bench_convert.py [--threads N] [--keep DIR] [--type q4_0]
"""
import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

DIM, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 2048, 22, 32, 4, 5632, 32000


def shapes():
    hd = DIM // HEADS
    out = {"model.embed_tokens.weight": (VOCAB, DIM)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (DIM,), p + "self_attn.q_proj.weight": (HEADS * hd, DIM),
                    p + "self_attn.k_proj.weight": (KV_HEADS * hd, DIM),
                    p + "self_attn.v_proj.weight": (KV_HEADS * hd, DIM),
                    p + "self_attn.o_proj.weight": (DIM, HEADS * hd),
                    p + "post_attention_layernorm.weight": (DIM,), p + "mlp.gate_proj.weight": (FFN, DIM),
                    p + "mlp.up_proj.weight": (FFN, DIM), p + "mlp.down_proj.weight": (DIM, FFN)})
    out["model.norm.weight"] = (DIM,)
    out["lm_head.weight"] = (VOCAB, DIM)
    return out


def write_checkpoint(d):
    """config.json, a 256-byte tiktoken vocab (padded by the converter) and
    one bf16 model.safetensors written from a recycled pool of random values."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "hidden_size": DIM, "intermediate_size": FFN,
                   "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
                   "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB, "rms_norm_eps": 1e-5,
                   "max_position_embeddings": 2048, "torch_dtype": "bfloat16"}, f)
    with open(os.path.join(d, "tokenizer.model"), "wb") as f:
        for b in range(256):
            f.write(base64.b64encode(bytes([b])) + b" %d\n" % b)
    sh = shapes()
    header, off = {}, 0
    for name, s in sh.items():
        n = int(np.prod(s)) * 2
        header[name] = {"dtype": "BF16", "shape": list(s), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 24).astype(np.float32) * 0.02).view(np.uint32) >> 16
    pool = pool.astype(np.uint16)
    pos = 0
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(len(hb).to_bytes(8, "little") + hb)
        for name, s in sh.items():
            left = int(np.prod(s))
            while left:
                k = min(left, pool.size - pos)
                f.write(pool[pos:pos + k].tobytes())
                pos, left = (pos + k) % pool.size, left - k
    return os.path.join(d, "model.safetensors")


def read_speed(path):
    t = time.time()
    with open(path, "rb") as f:
        while f.readinto(bytearray(64 << 20)):
            pass
    return os.path.getsize(path) / (time.time() - t)


def sample_memory(pid, peaks, stop):
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k in ("RssAnon", "RssFile", "VmRSS", "VmHWM"):
                        peaks[k] = max(peaks.get(k, 0), int(v.split()[0]) * 1024)
        except (OSError, ValueError):
            pass
        time.sleep(0.02)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--type", default="q4_0")
    ap.add_argument("--keep", default=None, help="reuse / keep the checkpoint in this directory")
    args = ap.parse_args()
    tmp = args.keep or tempfile.mkdtemp(prefix="bench_convert_")
    try:
        st = os.path.join(tmp, "model.safetensors")
        if not os.path.exists(st):
            t = time.time()
            write_checkpoint(tmp)
            print(f"wrote {os.path.getsize(st) / 1e9:.2f} GB checkpoint in {time.time() - t:.1f} s")
        size = os.path.getsize(st)
        rs = read_speed(st)   # also warms the page cache, as for the converter run
        out = os.path.join(tmp, f"out-{args.type}.gguf")
        cmd = [sys.executable, "-m", "pyllama_q.convert", tmp, out, "--type", args.type,
               "--threads", str(args.threads), "--quiet"]
        peaks, stop = {}, threading.Event()
        t = time.time()
        p = subprocess.Popen(cmd)
        th = threading.Thread(target=sample_memory, args=(p.pid, peaks, stop))
        th.start()
        rc = p.wait()
        el = time.time() - t
        stop.set()
        th.join()
        if rc:
            sys.exit(f"convert failed with exit code {rc}")
        print(f"input {size / 1e6:.0f} MB bf16 -> {args.type} {os.path.getsize(out) / 1e6:.0f} MB, "
              f"{args.threads} threads")
        print(f"convert: {el:.1f} s, {size / el / 1e6:.0f} MB/s of input "
              f"(plain read of the cached file: {rs / 1e6:.0f} MB/s)")
        print(f"peak RSS {peaks.get('VmHWM', 0) / 1e6:.0f} MB = anonymous {peaks.get('RssAnon', 0) / 1e6:.0f} MB "
              f"(converter's own memory) + file-backed up to {peaks.get('RssFile', 0) / 1e6:.0f} MB "
              f"(mapped input, page cache)")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
