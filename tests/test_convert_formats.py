"""Input encodings: bf16/f16/f32 in safetensors, pytorch_model.bin (single and
sharded), Meta .pth in bf16 (as Meta ships them) with 1 and 2 shards; the
written F32 tensors equal the source values exactly (after the q/k
permutation for HF). A 256-byte tiktoken vocab keeps these fast; progress bar
and the `python -m` entry point too."""
import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import test_convert_helpers as H
from pyllama_q.convert import convert

FAM = "llama3"        # GQA, vocab split along dim 0 in Meta shards
VOCAB = 512


def _tiktoken(path):
    with open(path, "wb") as f:
        for b in range(256):
            f.write(base64.b64encode(bytes([b])) + b" %d\n" % b)


def _config(d, dtype):
    f = H.FAMILIES[FAM]
    with open(os.path.join(d, "config.json"), "w") as fh:
        json.dump({"architectures": ["LlamaForCausalLM"], "hidden_size": H.DIM, "intermediate_size": H.FFN,
                   "num_hidden_layers": H.N_LAYERS, "num_attention_heads": f["n_heads"],
                   "num_key_value_heads": f["n_kv_heads"], "vocab_size": VOCAB, "rms_norm_eps": f["eps"],
                   "rope_theta": f["theta"], "torch_dtype": dtype}, fh)
    _tiktoken(os.path.join(d, "tokenizer.model"))


def _rounded(w, dtype):
    import torch

    return {k: torch.from_numpy(v).to(dtype).to(torch.float32).numpy() for k, v in w.items()}


def _expect_equal(out, w):
    """GGUF tensors == Meta-layout source values (HF files were un-permuted)."""
    got = H.gguf_to_meta(H.gguf_tensors(out), False)
    for k, v in w.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


@pytest.fixture(scope="module")
def weights():
    return H.random_weights(FAM, VOCAB, seed=11)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_hf_safetensors_dtypes(dtype, weights, tmp_path):
    import torch
    from safetensors.torch import save_file

    tdt = getattr(torch, dtype)
    d = str(tmp_path / "m")
    os.makedirs(d)
    _config(d, dtype)
    hf = {k: torch.from_numpy(v).to(tdt) for k, v in H.to_hf(weights, FAM).items()}
    save_file(hf, os.path.join(d, "model.safetensors"))
    out = str(tmp_path / "o.gguf")
    convert(d, out, "f32")
    _expect_equal(out, _rounded(weights, tdt))


@pytest.mark.parametrize("shards", [1, 2])
def test_hf_pytorch_model_bin(shards, weights, tmp_path):
    import torch

    d = str(tmp_path / "m")
    os.makedirs(d)
    _config(d, "bfloat16")
    hf = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in H.to_hf(weights, FAM).items()}
    if shards == 1:
        torch.save(hf, os.path.join(d, "pytorch_model.bin"))
    else:
        names, wm = list(hf), {}
        for s in range(shards):
            fn = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
            torch.save({k: hf[k] for k in names[s::shards]}, os.path.join(d, fn))
            wm.update({k: fn for k in names[s::shards]})
        with open(os.path.join(d, "pytorch_model.bin.index.json"), "w") as f:
            json.dump({"weight_map": wm}, f)
    out = str(tmp_path / "o.gguf")
    convert(d, out, "f32")
    _expect_equal(out, _rounded(weights, torch.bfloat16))


def test_meta_bf16_shards(weights, tmp_path):
    """Meta's checkpoints are bf16 .pth shards; 1 and 2 shards give the same bytes."""
    import torch

    outs = []
    for n in (1, 2):
        d = str(tmp_path / f"m{n}")
        os.makedirs(d)
        f = H.FAMILIES[FAM]
        with open(os.path.join(d, "params.json"), "w") as fh:
            json.dump({"dim": H.DIM, "n_layers": H.N_LAYERS, "n_heads": f["n_heads"],
                       "n_kv_heads": f["n_kv_heads"], "norm_eps": f["eps"], "rope_theta": f["theta"],
                       "vocab_size": VOCAB}, fh)
        _tiktoken(os.path.join(d, "tokenizer.model"))
        for s in range(n):
            sd = {}
            for k, v in weights.items():
                t = torch.from_numpy(v).to(torch.bfloat16)
                ax = H._meta_axis(k, FAM)
                sd[k] = torch.chunk(t, n, dim=ax)[s].clone() if ax is not None else t
            torch.save(sd, os.path.join(d, f"consolidated.{s:02d}.pth"))
        outs.append(str(tmp_path / f"o{n}.gguf"))
        convert(d, outs[-1], "f32", name="m")
    with open(outs[0], "rb") as a, open(outs[1], "rb") as b:
        assert a.read() == b.read()
    _expect_equal(outs[0], _rounded(weights, torch.bfloat16))


def test_progress_bar_and_python_m_entry_point(weights, tmp_path):
    from safetensors.numpy import save_file

    d = str(tmp_path / "m")
    os.makedirs(d)
    _config(d, "float32")
    save_file(H.to_hf(weights, FAM), os.path.join(d, "model.safetensors"))
    out = str(tmp_path / "o.gguf")
    r = subprocess.run([sys.executable, "-m", "pyllama_q.convert", d, out, "--type", "q8_0", "--progress"],
                       capture_output=True, timeout=300)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "MB/s" in err and "ETA" in err and "\r[" in err   # a bar redrawn in place
    assert "worst relative RMS error" in err and "blk.1.ffn_down.weight" in err
    assert os.path.getsize(out) > 0 and [f for f in os.listdir(tmp_path) if f.endswith(".part")] == []
    # no bar when stderr is not a terminal and --progress is absent
    r = subprocess.run([sys.executable, "-m", "pyllama_q.convert", d, out, "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stderr == ""


def test_runtime_imports_no_torch_safetensors_or_gguf(weights, tmp_path):
    """torch, safetensors and gguf are test-only: a conversion (Meta .pth
    shards included) must not import them."""
    import torch

    d = str(tmp_path / "m")
    os.makedirs(d)
    f = H.FAMILIES[FAM]
    with open(os.path.join(d, "params.json"), "w") as fh:
        json.dump({"dim": H.DIM, "n_layers": H.N_LAYERS, "n_heads": f["n_heads"], "n_kv_heads": f["n_kv_heads"],
                   "norm_eps": f["eps"], "vocab_size": VOCAB}, fh)
    _tiktoken(os.path.join(d, "tokenizer.model"))
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, os.path.join(d, "consolidated.00.pth"))
    code = ("import sys\nfrom pyllama_q.convert import main\n"
            f"assert main([{d!r}, {str(tmp_path / 'o.gguf')!r}, '--quiet']) == 0\n"
            "bad = sorted(m for m in ('torch', 'safetensors', 'gguf', 'transformers') if m in sys.modules)\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


class _RecordingRaw:
    """A raw file that records (offset, length) of every write and, if asked,
    writes at most `limit` bytes per call (as a raw file may)."""

    def __init__(self, limit=None):
        self.data, self.writes, self.limit = bytearray(), [], limit

    def write(self, b):
        n = len(b) if self.limit is None else min(len(b), self.limit)
        self.writes.append((len(self.data), len(b)))
        self.data += bytes(b[:n])
        return n

    def flush(self):
        pass


def test_chunked_file_writes_whole_aligned_chunks(monkeypatch):
    """The converter's output goes to the OS in chunk-aligned, chunk-sized
    writes (what lets Linux cache it in 2 MiB folios), whatever sizes the
    encoder hands over; the bytes are the same."""
    from pyllama_q.convert import gguf_writer as gw
    monkeypatch.setattr(gw, "WRITE_CHUNK", 4096)
    rng = np.random.default_rng(3)
    pieces = [rng.integers(0, 256, n, dtype=np.uint8) for n in
              (1, 100, 4095, 4096, 4097, 3 * 4096, 5000, 7, 2 * 4096 + 5, 300)]
    raw = _RecordingRaw()
    f = gw.ChunkedFile(raw)
    for p in pieces:
        assert f.write(p) == len(p)
    f.flush()
    want = b"".join(p.tobytes() for p in pieces)
    assert bytes(raw.data) == want
    *body, last = raw.writes
    for off, n in body:
        assert off % 4096 == 0 and n % 4096 == 0 and n > 0, (off, n)
    assert last[0] % 4096 == 0 and last[0] + last[1] == len(want)


def test_chunked_file_finishes_short_writes_and_stops_on_none(monkeypatch):
    from pyllama_q.convert import gguf_writer as gw
    monkeypatch.setattr(gw, "WRITE_CHUNK", 4096)
    data = bytes(range(256)) * 70
    raw = _RecordingRaw(limit=1000)
    f = gw.ChunkedFile(raw)
    f.write(data)
    f.flush()
    assert bytes(raw.data) == data
    stuck = _RecordingRaw(limit=0)
    with pytest.raises(OSError, match="no progress"):
        gw.ChunkedFile(stuck).write(data)
