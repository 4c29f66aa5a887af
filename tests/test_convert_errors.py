"""Malformed inputs: each a one-line error naming the file/tensor/key, and no
output file left behind. Self-contained (a 256-token tiktoken vocab written
here), so these run without the tokenizer fixtures."""
import base64
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from pyllama_q.convert import ConvertError, convert, main
from pyllama_q.errors import PQError

DIM, HEADS, LAYERS, FFN = 32, 2, 1, 64
VOCAB = 512   # 256 byte tokens + LLaMA 3's 256 specials


def _tiktoken(path):
    with open(path, "wb") as f:
        for b in range(256):
            f.write(base64.b64encode(bytes([b])) + b" %d\n" % b)


def _meta_sd(rng, wq_cols=DIM):
    import torch

    t = lambda *s: torch.from_numpy(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    return {"tok_embeddings.weight": t(VOCAB, DIM), "norm.weight": t(DIM), "output.weight": t(VOCAB, DIM),
            "layers.0.attention_norm.weight": t(DIM), "layers.0.attention.wq.weight": t(DIM, wq_cols),
            "layers.0.attention.wk.weight": t(DIM, DIM), "layers.0.attention.wv.weight": t(DIM, DIM),
            "layers.0.attention.wo.weight": t(DIM, DIM), "layers.0.ffn_norm.weight": t(DIM),
            "layers.0.feed_forward.w1.weight": t(FFN, DIM), "layers.0.feed_forward.w3.weight": t(FFN, DIM),
            "layers.0.feed_forward.w2.weight": t(DIM, FFN)}


def _meta_dir(d, shards=1, params=True):
    import torch

    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(0)
    if params:
        with open(os.path.join(d, "params.json"), "w") as f:
            json.dump({"dim": DIM, "n_layers": LAYERS, "n_heads": HEADS, "norm_eps": 1e-5,
                       "vocab_size": VOCAB, "rope_theta": 500000.0}, f)
    _tiktoken(os.path.join(d, "tokenizer.model"))
    for s in range(shards):
        torch.save(_meta_sd(rng), os.path.join(d, f"consolidated.{s:02d}.pth"))
    return d


def _hf_dir(d, arch="LlamaForCausalLM", hidden=DIM):
    from safetensors.numpy import save_file

    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"architectures": [arch], "hidden_size": hidden, "intermediate_size": FFN,
                   "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "vocab_size": VOCAB,
                   "rms_norm_eps": 1e-5}, f)
    _tiktoken(os.path.join(d, "tokenizer.model"))
    rng = np.random.default_rng(1)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    p = "model.layers.0."
    save_file({"model.embed_tokens.weight": r(VOCAB, DIM), "model.norm.weight": r(DIM),
               "lm_head.weight": r(VOCAB, DIM), p + "input_layernorm.weight": r(DIM),
               p + "self_attn.q_proj.weight": r(DIM, DIM), p + "self_attn.k_proj.weight": r(DIM, DIM),
               p + "self_attn.v_proj.weight": r(DIM, DIM), p + "self_attn.o_proj.weight": r(DIM, DIM),
               p + "post_attention_layernorm.weight": r(DIM), p + "mlp.gate_proj.weight": r(FFN, DIM),
               p + "mlp.up_proj.weight": r(FFN, DIM), p + "mlp.down_proj.weight": r(DIM, FFN)},
              os.path.join(d, "model.safetensors"))
    return d


def _fails(src, out_dir, capsys, *words):
    """Run the CLI; expect exit 1, one stderr line holding `words`, no output."""
    os.makedirs(out_dir, exist_ok=True)
    rc = main([src, os.path.join(out_dir, "out.gguf"), "--type", "f32"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.count("\n") == 1 and err.startswith("pyllama-q convert: error: "), err
    for w in words:
        assert w in err, (w, err)
    assert os.listdir(out_dir) == [], "a failed convert left files behind"
    return err


def test_good_inputs_convert(tmp_path):
    """The fixtures below are valid before they are broken."""
    convert(_meta_dir(str(tmp_path / "m")), str(tmp_path / "m.gguf"), "f32")
    convert(_hf_dir(str(tmp_path / "h")), str(tmp_path / "h.gguf"), "f32")
    assert os.path.getsize(tmp_path / "m.gguf") > 0 and os.path.getsize(tmp_path / "h.gguf") > 0


def test_truncated_safetensors_header(tmp_path, capsys):
    d = _hf_dir(str(tmp_path / "h"))
    p = os.path.join(d, "model.safetensors")
    with open(p, "r+b") as f:
        f.truncate(100)
    _fails(d, str(tmp_path / "o"), capsys, "model.safetensors", "truncated safetensors header")


def test_safetensors_offsets_outside_data(tmp_path, capsys):
    d = _hf_dir(str(tmp_path / "h"))
    p = os.path.join(d, "model.safetensors")
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size - 4)   # the last tensor now runs past the end
    _fails(d, str(tmp_path / "o"), capsys, "model.safetensors", "offsets")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_unexpected_global_is_refused_not_run(tmp_path, capsys):
    d = _meta_dir(str(tmp_path / "m"))
    marker = tmp_path / "pwned"
    pth = os.path.join(d, "consolidated.00.pth")
    os.unlink(pth)
    with zipfile.ZipFile(pth, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({"tok_embeddings.weight": _Evil(marker)}, protocol=2))
    err = _fails(d, str(tmp_path / "o"), capsys, "consolidated.00.pth", "system")
    assert "posix.system" in err or "os.system" in err
    assert not marker.exists(), "the pickle ran code"


def test_missing_params_json(tmp_path, capsys):
    d = _meta_dir(str(tmp_path / "m"), params=False)
    _fails(d, str(tmp_path / "o"), capsys, "missing params.json")


def test_mismatched_shard_shapes(tmp_path, capsys):
    import torch

    d = _meta_dir(str(tmp_path / "m"), shards=2)
    torch.save(_meta_sd(np.random.default_rng(5), wq_cols=DIM + 8), os.path.join(d, "consolidated.01.pth"))
    _fails(d, str(tmp_path / "o"), capsys, "consolidated.01.pth", "layers.0.attention.wq.weight")


def test_missing_shard(tmp_path, capsys):
    d = _meta_dir(str(tmp_path / "m"), shards=3)
    os.unlink(os.path.join(d, "consolidated.01.pth"))
    _fails(d, str(tmp_path / "o"), capsys, "missing shard", "consolidated.01.pth")
    h = _hf_dir(str(tmp_path / "h"))
    with open(os.path.join(h, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}, f)
    _fails(h, str(tmp_path / "o2"), capsys, "missing shard", "model-00002-of-00002.safetensors")


def test_unknown_architecture(tmp_path, capsys):
    d = _hf_dir(str(tmp_path / "h"), arch="GPT2LMHeadModel")
    _fails(d, str(tmp_path / "o"), capsys, "config.json", "unknown architecture", "GPT2LMHeadModel")


def test_shape_mismatch_with_config(tmp_path, capsys):
    d = _hf_dir(str(tmp_path / "h"), hidden=64)
    _fails(d, str(tmp_path / "o"), capsys, "model.safetensors", ".weight: shape", "does not match the config")


def test_missing_tokenizer(tmp_path, capsys):
    d = _hf_dir(str(tmp_path / "h"))
    os.unlink(os.path.join(d, "tokenizer.model"))
    _fails(d, str(tmp_path / "o"), capsys, "missing tokenizer")


def test_not_a_gguf_and_not_a_model(tmp_path, capsys):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 8)
    _fails(str(p), str(tmp_path / "o"), capsys, "x.gguf", "truncated GGUF header")


def test_interrupted_convert_leaves_nothing_and_keeps_old_output(tmp_path, monkeypatch):
    from pyllama_q.convert import quantize

    d = _hf_dir(str(tmp_path / "h"))
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    old = out_dir / "out.gguf"
    old.write_bytes(b"previous")
    calls = {"n": 0}
    real = quantize._encode_chunk

    def boom(*a):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(quantize, "_encode_chunk", boom)
    with pytest.raises(KeyboardInterrupt):
        convert(d, str(old), "f32", threads=1)
    assert os.listdir(out_dir) == ["out.gguf"] and old.read_bytes() == b"previous"


def test_convert_error_is_a_pqerror():
    assert issubclass(ConvertError, PQError)
