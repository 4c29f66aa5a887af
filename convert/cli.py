"""cli.py: `pyllama-q convert SRC OUT`, the conversion driver.

What it is: argument parsing, metadata (general.*, llama.*, tokenizer.*),
the choice of type per tensor, streaming every tensor through the encoder
into a temporary file in OUT's directory that is renamed over OUT only at the
end (an interrupted or failed run leaves nothing behind), the progress bar
and the per-tensor error report.
What it is not: checkpoint parsing (model.py, readers.py, vocab.py).
"""
import argparse
import os
import sys
import tempfile
import time

from . import gguf_writer as gw
from .errors import ConvertError
from .quantize import Encoder

OUT_TYPES = {"f32": gw.GGML_F32, "f16": gw.GGML_F16, "q4_0": gw.GGML_Q4_0,
             "q4_1": gw.GGML_Q4_1, "q8_0": gw.GGML_Q8_0}
# llama_ftype of a file whose 2-D tensors are mostly of that type
FILE_TYPE = {gw.GGML_F32: 0, gw.GGML_F16: 1, gw.GGML_Q4_0: 2, gw.GGML_Q4_1: 3, gw.GGML_Q8_0: 7}
# keys of a GGUF input that describe the file itself, rewritten by us
_OWN_KEYS = {"general.file_type", "general.quantization_version", "general.alignment"}


def tensor_type(name, shape, want, output_name):
    """1-D tensors (norms, rope_freqs) stay F32; rows that are not whole
    blocks fall back to F16. With a 4-bit type the output projection
    (output.weight, or token_embd.weight when the embedding is tied) is Q8_0:
    llama.cpp's quantizer likewise keeps it at Q6_K/Q8_0, since the logits are
    the most error-sensitive product."""
    if len(shape) < 2:
        return gw.GGML_F32
    if name == output_name and want in (gw.GGML_Q4_0, gw.GGML_Q4_1):
        want = gw.GGML_Q8_0
    blk, _ = gw.BLOCK[want]
    return want if shape[-1] % blk == 0 else gw.GGML_F16


def add_model_metadata(w, plan, out_type):
    hp, v = plan.hp, plan.vocab
    w.add_string("general.architecture", "llama")
    w.add_string("general.name", plan.name)
    w.add_u32("general.alignment", gw.ALIGNMENT)
    w.add_u32("general.file_type", FILE_TYPE[out_type])
    w.add_u32("general.quantization_version", 2)
    w.add_u32("llama.context_length", hp["n_ctx"])
    w.add_u32("llama.embedding_length", hp["dim"])
    w.add_u32("llama.block_count", hp["n_layers"])
    w.add_u32("llama.feed_forward_length", hp["ffn_dim"])
    w.add_u32("llama.rope.dimension_count", hp["head_dim"])
    w.add_f32("llama.rope.freq_base", hp["rope_theta"])
    w.add_u32("llama.attention.head_count", hp["n_heads"])
    w.add_u32("llama.attention.head_count_kv", hp["n_kv_heads"])
    if hp["head_dim"] != hp["dim"] // hp["n_heads"]:
        w.add_u32("llama.attention.key_length", hp["head_dim"])
        w.add_u32("llama.attention.value_length", hp["head_dim"])
    w.add_f32("llama.attention.layer_norm_rms_epsilon", hp["rms_eps"])
    w.add_u32("llama.vocab_size", hp["n_vocab"])
    rs = hp.get("rope_scaling")
    if rs and rs["type"] == "linear":
        w.add_string("llama.rope.scaling.type", "linear")
        w.add_f32("llama.rope.scaling.factor", rs["factor"])
    # tokenizer
    w.add_string("tokenizer.ggml.model", v.model)
    w.add_string("tokenizer.ggml.pre", v.pre)
    w.add_array("tokenizer.ggml.tokens", gw.T_STRING, v.tokens)
    if v.scores is not None:
        w.add_array("tokenizer.ggml.scores", gw.T_FLOAT32, v.scores)
    w.add_array("tokenizer.ggml.token_type", gw.T_INT32, v.token_type)
    if v.merges:
        w.add_array("tokenizer.ggml.merges", gw.T_STRING, v.merges)
    for key in ("bos", "eos", "eot", "eom", "unknown", "padding", "fim_pre", "fim_suf", "fim_mid"):
        if v.special.get(key) is not None:
            w.add_u32(f"tokenizer.ggml.{key}_token_id", v.special[key])
    if v.add_bos is not None:
        w.add_bool("tokenizer.ggml.add_bos_token", v.add_bos)
    if v.add_eos is not None:
        w.add_bool("tokenizer.ggml.add_eos_token", v.add_eos)
    if v.chat_template:
        w.add_string("tokenizer.chat_template", v.chat_template)


class _GGUFPlan:
    """A float GGUF (or a quantized one with allow_requantize) as a plan."""

    def __init__(self, path, allow_requantize, name):
        from .readers import GGML_TYPES, GGUFInput, gguf_src

        g = GGUFInput(path)
        arch = g.kv.get("general.architecture", (None, None))[1]
        if arch != "llama":
            raise ConvertError(f"{g.where}: unknown architecture {arch!r} (only llama is converted)")
        quant = [(n, GGML_TYPES[t][2]) for n, _, t, _ in g.tensors if GGML_TYPES[t][2] not in ("F32", "F16", "BF16")]
        if quant and not allow_requantize:
            n, t = quant[0]
            raise ConvertError(f"{g.where} is already quantized ({t}: {n}); re-quantizing loses "
                               f"accuracy, pass --allow-requantize to do it anyway")
        supported = {"Q4_0", "Q4_1", "Q8_0"}
        for n, t in quant:
            if t not in supported:
                raise ConvertError(f"{g.where}: tensor {n}: cannot re-quantize from {t}")
        self.kv = g.kv
        self.name = name
        self.tensors = [(n, gguf_src(raw, shape, t, f"{g.where}: {n}", g.mm)) for n, shape, t, raw in g.tensors]
        self.input = g


def add_copied_metadata(w, plan, out_type):
    for key, (raw, _) in plan.kv.items():
        if key in _OWN_KEYS or (key == "general.name" and plan.name):
            continue
        if key == "general.architecture":
            w.add_raw(key, raw)
            if plan.name:
                w.add_string("general.name", plan.name)
            w.add_u32("general.alignment", gw.ALIGNMENT)
            w.add_u32("general.file_type", FILE_TYPE[out_type])
            w.add_u32("general.quantization_version", 2)
            continue
        w.add_raw(key, raw)


class Progress:
    """A one-line progress bar on stderr: percent, MB done, MB/s, ETA."""

    def __init__(self, total, enabled):
        self.total, self.enabled, self.done, self.t0, self.last = total, enabled, 0, time.time(), 0.0

    def add(self, n, label):
        self.done += n
        now = time.time()
        if not self.enabled or (now - self.last < 0.2 and self.done < self.total):
            return
        self.last = now
        el = max(now - self.t0, 1e-9)
        rate = self.done / el
        eta = (self.total - self.done) / rate if rate > 0 else 0
        frac = self.done / max(self.total, 1)
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r[{bar:<30}] {frac * 100:5.1f}% {self.done / 1e6:8.1f}/{self.total / 1e6:.1f} MB "
                         f"{rate / 1e6:6.1f} MB/s ETA {eta:4.0f}s {label[:28]:<28}")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")


def _source_bytes(src):
    """Bytes read from the input for a tensor (for the MB/s figure)."""
    if hasattr(src, "arr"):
        return int(src.arr.nbytes)
    if hasattr(src, "srcs"):
        return sum(_source_bytes(s) for s in src.srcs)
    if hasattr(src, "src"):
        return _source_bytes(src.src)
    if hasattr(src, "raw"):
        return int(src.raw.nbytes)
    return 0


def convert(src, out, out_type="q4_0", allow_requantize=False, threads=None, name=None,
            progress=None, report=None, pure=False):
    """Convert `src` (a model directory or a GGUF file) into `out`; returns the
    list of (name, type name, shape, relative RMS error)."""
    from .model import plan_dir

    if out_type not in OUT_TYPES:
        raise ConvertError(f"unknown --type {out_type!r} (choose from {', '.join(OUT_TYPES)})")
    want = OUT_TYPES[out_type]
    out_abs = os.path.abspath(out)
    if os.path.isdir(out_abs):
        raise ConvertError(f"{out}: is a directory; give the output file name")
    if os.path.exists(out_abs):
        # a model directory's inputs are its non-GGUF files (an earlier output may live there)
        inputs = [os.path.join(src, f) for f in os.listdir(src) if not f.endswith(".gguf")] \
            if os.path.isdir(src) else [src]
        if any(os.path.isfile(f) and os.path.samefile(f, out_abs) for f in inputs):
            raise ConvertError(f"{out}: the output would overwrite an input file")
    plan = _GGUFPlan(src, allow_requantize, name) if os.path.isfile(src) else plan_dir(src, name)

    w = gw.GGUFWriter()
    if isinstance(plan, _GGUFPlan):
        add_copied_metadata(w, plan, want)
    else:
        add_model_metadata(w, plan, want)
    types = []
    names = [n for n, _ in plan.tensors]
    output_name = None if pure else ("output.weight" if "output.weight" in names else "token_embd.weight")
    for tname, s in plan.tensors:
        t = tensor_type(tname, s.shape, want, output_name)
        w.declare_tensor(tname, s.shape, t)
        types.append(t)

    out_dir = os.path.dirname(out_abs) or "."
    if not os.path.isdir(out_dir):
        raise ConvertError(f"{out}: directory {out_dir} does not exist")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(out_abs) + ".", suffix=".part", dir=out_dir)
    enc = Encoder(threads or os.cpu_count() or 1)
    if progress is None:
        progress = sys.stderr.isatty()
    total_in = sum(_source_bytes(s) for _, s in plan.tensors)
    bar = Progress(total_in, progress)
    rows = []
    try:
        with os.fdopen(fd, "wb", buffering=0) as raw:
            f = gw.ChunkedFile(raw)
            w.write_header(f)
            for (tname, s), t in zip(plan.tensors, types):
                stats = {}
                w.write_tensor_data(f, tname, enc.encode(s, t, stats))
                rel = (stats["sse"] / stats["ss"]) ** 0.5 if stats["ss"] > 0 else 0.0
                rows.append((tname, gw.TYPE_NAME[t], tuple(s.shape), rel))
                s.release()
                bar.add(_source_bytes(s), tname)
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)   # mkstemp made it 0600; give it a normal file's mode
        os.replace(tmp, out_abs)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        enc.close()
        bar.close()
    if report:
        print_report(rows, report)
    return rows


def print_report(rows, stream):
    stream.write(f"{'tensor':<28} {'type':<5} {'shape':<16} rel.RMS err\n")
    for n, t, shape, rel in rows:
        stream.write(f"{n:<28} {t:<5} {'x'.join(map(str, shape)):<16} {rel:.3e}\n")
    worst = max(rows, key=lambda r: r[3]) if rows else None
    if worst:
        stream.write(f"{len(rows)} tensors; worst relative RMS error {worst[3]:.3e} ({worst[0]})\n")


def build_parser(prog="pyllama-q convert"):
    p = argparse.ArgumentParser(prog=prog, description="Convert a LLaMA-family checkpoint (Hugging Face "
                                "or Meta layout, or a float GGUF) into one quantized GGUF file.")
    p.add_argument("src", metavar="SRC", help="model directory, or a .gguf file to re-quantize")
    p.add_argument("out", metavar="OUT", help="output .gguf file")
    p.add_argument("--type", default="q4_0", choices=sorted(OUT_TYPES), help="weight type (default q4_0)")
    p.add_argument("--allow-requantize", action="store_true",
                   help="allow re-quantizing a GGUF whose weights are already quantized")
    p.add_argument("--pure", action="store_true",
                   help="every 2-D tensor in --type (by default a 4-bit file keeps the output "
                        "projection in Q8_0, as llama.cpp's quantizer keeps it at Q6_K/Q8_0)")
    p.add_argument("--threads", type=int, default=None, help="encoder threads (default: all CPUs)")
    p.add_argument("--name", default=None, help="general.name (default: the model directory name)")
    p.add_argument("--progress", action="store_true", help="progress bar even when stderr is not a TTY")
    p.add_argument("--quiet", action="store_true", help="no per-tensor error report")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    t0 = time.time()
    try:
        rows = convert(args.src, args.out, args.type, args.allow_requantize, args.threads, args.name,
                       progress=True if args.progress else None,
                       report=None if args.quiet else sys.stderr, pure=args.pure)
    except ConvertError as e:
        print(f"pyllama-q convert: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:   # unwritable directory, disk full, unreadable input
        print(f"pyllama-q convert: error: {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pyllama-q convert: interrupted; no output written", file=sys.stderr)
        return 130
    if not args.quiet:
        size = os.path.getsize(args.out)
        print(f"wrote {args.out}: {len(rows)} tensors, {size / 1e6:.1f} MB in {time.time() - t0:.1f} s",
              file=sys.stderr)
    return 0
