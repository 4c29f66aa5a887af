"""make_models.py: the GGUF files the benchmark runs on, made once into
pyllama_q.sample.cache_dir()/bench (never committed).

What it is: two generators and a registry.
  * re-quantized sample: SmolLM2-135M-Instruct (the Q4_1 sample) dequantized
    with the `gguf` package and quantized again to Q4_0 / Q8_0 / F16. Every
    2-D weight (token embeddings included) gets the target type; norms stay F32.
  * random-weight files with real model shapes (TinyLlama-1.1B, LLaMA-2-7B):
    block bytes written straight from a random generator, with fp16 scales
    chosen so weights have a std of about 0.02 (quantizing floats would take
    minutes for 7B). The 32000-token SentencePiece vocabulary's metadata is
    copied from llama.cpp's `ggml-vocab-llama-spm.gguf` (shipped in the
    llama-cpp-python sdist) so that llama.cpp opens the files.
What it is not: a converter. The weights of the random files mean nothing;
they exist so that both engines do the same amount of work on real shapes.

    python -m benchmarks.make_models [NAME ...]    # all when no name
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from pyllama_q.sample import cache_dir, sample_model_path

# llama_ftype values written to general.file_type (llama.cpp's enum).
FTYPE = {"f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7}

# name -> spec. "shape" models are random; "requant" models come from the sample.
MODELS = {
    "smollm2-q4_1": {"kind": "sample"},
    "smollm2-q4_0": {"kind": "requant", "type": "q4_0"},
    "smollm2-q8_0": {"kind": "requant", "type": "q8_0"},
    "smollm2-f16": {"kind": "requant", "type": "f16"},
    "tinyllama-q4_0": {"kind": "random", "shape": "tinyllama", "type": "q4_0"},
    "tinyllama-q8_0": {"kind": "random", "shape": "tinyllama", "type": "q8_0"},
    "llama7b-q4_0": {"kind": "random", "shape": "llama7b", "type": "q4_0"},
}
DEFAULT_SET = ["smollm2-q4_0", "smollm2-q8_0", "smollm2-f16", "tinyllama-q4_0",
               "tinyllama-q8_0", "llama7b-q4_0"]

SHAPES = {
    # TinyLlama-1.1B: GQA 32 heads / 4 kv heads, head_dim 64.
    "tinyllama": dict(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn=5632,
                      n_vocab=32000, n_ctx=2048, rope_base=10000.0),
    # LLaMA-2-7B: MHA 32 heads, head_dim 128.
    "llama7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn=11008,
                    n_vocab=32000, n_ctx=4096, rope_base=10000.0),
}


def bench_dir():
    d = os.path.join(cache_dir(), "bench")
    os.makedirs(d, exist_ok=True)
    return d


def model_path(name):
    if MODELS[name]["kind"] == "sample":
        return sample_model_path()
    return os.path.join(bench_dir(), f"{name}.gguf")


def ensure(name, quiet=False):
    """Path of model `name`, making the file first if it is absent."""
    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    path = model_path(name)
    if os.path.exists(path):
        return path
    spec = MODELS[name]
    t0 = time.perf_counter()
    part = path + ".part"
    if spec["kind"] == "requant":
        write_requantized(sample_model_path(), part, spec["type"])
    else:
        write_random(part, SHAPES[spec["shape"]], spec["type"], vocab_gguf())
    os.replace(part, path)  # a half-written file never has the final name
    if not quiet:
        print(f"made {path} ({os.path.getsize(path) / 1e9:.2f} GB, "
              f"{time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return path


# ---- metadata copy ----------------------------------------------------------

def _copy_field(writer, field):
    """Copy one GGUF key/value from a GGUFReader field, strings as raw bytes."""
    import gguf

    vt = gguf.GGUFValueType
    t0 = field.types[0]
    if t0 == vt.ARRAY:
        sub = field.types[-1]
        if sub == vt.STRING:
            val = [bytes(field.parts[i]) for i in field.data]
        else:
            val = [field.parts[i].tolist()[0] for i in field.data]
        writer.add_key_value(field.name, val, vt.ARRAY, sub_type=sub)
    elif t0 == vt.STRING:
        writer.add_key_value(field.name, bytes(field.parts[field.data[0]]), vt.STRING)
    else:
        writer.add_key_value(field.name, field.parts[field.data[0]].tolist()[0], t0)


def vocab_gguf():
    """Path of llama.cpp's ggml-vocab-llama-spm.gguf (metadata-only file),
    extracted from the llama-cpp-python sdist fetched with pip."""
    rel = os.path.join("vendor", "llama.cpp", "models", "ggml-vocab-llama-spm.gguf")
    dest = os.path.join(bench_dir(), "ggml-vocab-llama-spm.gguf")
    if os.path.exists(dest):
        return dest
    for cand in glob.glob(os.path.join("/tmp/tokdl", "llama_cpp_python-*", rel)):
        with open(cand, "rb") as src, open(dest + ".part", "wb") as out:
            out.write(src.read())
        os.replace(dest + ".part", dest)
        return dest
    import tarfile

    with tempfile.TemporaryDirectory(dir=bench_dir()) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--no-build-isolation", "--disable-pip-version-check", "-d", tmp,
               "llama-cpp-python"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        sdist = glob.glob(os.path.join(tmp, "*.tar.gz"))[0]
        with tarfile.open(sdist) as tf:
            member = next(m for m in tf.getmembers() if m.name.endswith(rel))
            with tf.extractfile(member) as src, open(dest + ".part", "wb") as out:
                out.write(src.read())
    os.replace(dest + ".part", dest)
    return dest


# ---- re-quantized sample ----------------------------------------------------

def write_requantized(src, dst, qtype):
    """Every 2-D tensor of `src` dequantized to f32 and quantized to qtype."""
    import gguf
    from gguf.quants import dequantize, quantize

    Q = gguf.GGMLQuantizationType
    target = {"q4_0": Q.Q4_0, "q8_0": Q.Q8_0, "f16": Q.F16}[qtype]
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, arch="llama")
    w.kv_data[0].clear()  # the constructor adds general.architecture; we copy it
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        if name == "general.file_type":
            w.add_key_value(name, FTYPE[qtype], gguf.GGUFValueType.UINT32)
        else:
            _copy_field(w, f)
    datas = []
    for t in r.tensors:
        x = dequantize(t.data, t.tensor_type)  # (rows, cols) f32
        if x.ndim == 2 and t.tensor_type != Q.F32:
            data = quantize(x.astype(np.float32), target)
            w.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes,
                              raw_dtype=target if target != Q.F16 else None)
        else:
            data = np.ascontiguousarray(x, dtype=np.float32)
            w.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes)
        datas.append(data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for data in datas:
        w.write_tensor_data(data)
    w.close()


# ---- random weights -----------------------------------------------------------

def _random_blocks(rng, qtype, rows, cols):
    """(rows, bytes_per_row) uint8 of random blocks with sane fp16 scales; or
    (rows, cols) f16 for F16. Weight std about 0.02 in every format."""
    if qtype == "f16":
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)
    nb = rows * cols // 32
    if qtype == "q4_0":    # block_q4_0: fp16 d, 16 bytes of nibbles; w = d*(q-8), std(q-8) ~ 4.6
        blk, d0 = 18, 0.02 / 4.6
    elif qtype == "q8_0":  # block_q8_0: fp16 d, 32 int8; w = d*q, std(q) ~ 74
        blk, d0 = 34, 0.02 / 74.0
    else:
        raise ValueError(f"no random generator for {qtype}")
    b = rng.integers(0, 256, (nb, blk), dtype=np.uint8)
    d = (d0 * (0.75 + 0.5 * rng.random(nb, dtype=np.float32))).astype(np.float16)
    b[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
    return b.reshape(rows, (cols // 32) * blk)


def write_random(dst, hp, qtype, vocab_path, seed=0):
    """A llama-architecture GGUF of shape `hp` with random `qtype` weights,
    written one tensor at a time (peak memory ~ one tensor)."""
    import gguf

    Q = gguf.GGMLQuantizationType
    raw = {"q4_0": Q.Q4_0, "q8_0": Q.Q8_0, "f16": None}[qtype]
    dim, ffn, nl = hp["dim"], hp["ffn"], hp["n_layers"]
    head_dim = dim // hp["n_heads"]
    kv_dim = head_dim * hp["n_kv_heads"]
    vr = gguf.GGUFReader(vocab_path)

    w = gguf.GGUFWriter(dst, arch="llama")
    w.add_name(f"random {dim}x{nl} ({qtype}) for benchmarks")
    w.add_file_type(FTYPE[qtype])
    w.add_block_count(nl)
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(hp["n_heads"])
    w.add_head_count_kv(hp["n_kv_heads"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(hp["rope_base"])
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(hp["n_vocab"])
    for name, f in vr.fields.items():
        if name.startswith("tokenizer."):
            _copy_field(w, f)

    # (name, rows, cols); rows = 1 marks a 1-D f32 norm of `cols` elements.
    tensors = [("token_embd.weight", hp["n_vocab"], dim), ("output_norm.weight", 1, dim),
               ("output.weight", hp["n_vocab"], dim)]
    for i in range(nl):
        p = f"blk.{i}."
        tensors += [(p + "attn_norm.weight", 1, dim), (p + "attn_q.weight", dim, dim),
                    (p + "attn_k.weight", kv_dim, dim), (p + "attn_v.weight", kv_dim, dim),
                    (p + "attn_output.weight", dim, dim), (p + "ffn_norm.weight", 1, dim),
                    (p + "ffn_gate.weight", ffn, dim), (p + "ffn_up.weight", ffn, dim),
                    (p + "ffn_down.weight", dim, ffn)]
    bpb = {"q4_0": 18, "q8_0": 34}
    for name, rows, cols in tensors:
        if rows == 1:
            w.add_tensor_info(name, (cols,), np.dtype(np.float32), cols * 4)
        elif qtype == "f16":
            w.add_tensor_info(name, (rows, cols), np.dtype(np.float16), rows * cols * 2)
        else:
            nbytes = rows * (cols // 32) * bpb[qtype]
            w.add_tensor_info(name, (rows, nbytes // rows), np.dtype(np.uint8), nbytes,
                              raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for name, rows, cols in tensors:
        if rows == 1:
            w.write_tensor_data(np.ones(cols, dtype=np.float32))
        else:
            w.write_tensor_data(_random_blocks(rng, qtype, rows, cols))
    w.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"models to make (default: {' '.join(DEFAULT_SET)})")
    args = ap.parse_args(argv)
    for name in args.names or DEFAULT_SET:
        print(name, ensure(name))


if __name__ == "__main__":
    main()
