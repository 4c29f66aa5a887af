"""End to end against Hugging Face transformers (float32, one torch thread) on
the sample model SmolLM2-135M-Instruct.

The reference LlamaForCausalLM is built here from a LlamaConfig and the GGUF
weights dequantized with the gguf package (the oracle for block formats), with
the q/k row permutation of llama.cpp's converter undone, so nothing of
pyllama-q's C code or loader is involved. (transformers' own GGUF loading
needs the `accelerate` package, which the test environment does not have.)

(a) An F32 copy of the sample model (same weights, dequantized, written with
    GGUFWriter) against the reference: per-position KL and a 32-token greedy
    continuation.
(b) The Q4_1 file as shipped: top-1 agreement and mean KL against the same
    reference.
"""
import contextlib
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from pyllama_q.model import KVContext, Weights  # noqa: E402

pytestmark = pytest.mark.slow

TEXT = (
    "The lighthouse stood at the end of a long spit of sand, and for most of the year "
    "nobody visited it except the keeper, a quiet woman named Ada who kept a logbook of "
    "every ship that passed. She wrote down the weather at dawn and at dusk, the height "
    "of the tide, the colour of the water, and anything unusual she noticed: a flock of "
    "geese flying too late in the season, a fishing boat with a torn red sail, a strange "
    "green light on the horizon that appeared three nights in a row and then vanished. "
    "In the winter the storms came in from the west, and the waves broke so high against "
    "the rocks that the spray reached the lamp room. Ada trimmed the wick, polished the "
    "great lens, and climbed the one hundred and twelve steps twice every night. She "
    "liked the work because it was simple and because it mattered; a ship that could "
    "not see the light could not see the reef. One spring morning a letter arrived from "
    "the harbour office in the city. The lamp was to be replaced by an automatic beacon, "
    "the letter said, and the keeper would no longer be needed. Ada read it twice, folded "
    "it carefully, and put it inside the logbook. Then she went outside, sat on the bench "
    "by the door, and watched the gulls for a long time. When the sun had set she climbed "
    "the stairs as usual and lit the lamp, and she wrote in the logbook:"
)
N_GEN = 32

# More text for the quantized comparison: top-1 agreement over ~1000
# positions instead of ~300, so that a handful of near-ties flipping one way
# or the other (which depends on summation order) no longer decides the test.
MORE_TEXT = (
    " The next morning the weather turned. A grey wall of cloud rolled in from the sea, "
    "and by noon the rain was coming sideways across the dunes. Ada made a pot of tea, "
    "sat at the kitchen table and began to make a list of everything she would have to "
    "pack: the books, the barometer her father had given her, two wool blankets, the "
    "brass telescope, a box of letters, and the small clock that had never kept good time. "
    "She counted the years she had spent at the lighthouse on her fingers and came to "
    "twenty-seven, then counted again to be sure.\n\n"
    "\"You could come to the city,\" her sister had written the previous winter. \"There "
    "is a room above the bakery, and the baker needs someone to keep his accounts.\" Ada "
    "had laughed at the idea then. Now she took the letter out of the drawer and read it "
    "again, slowly, while the wind rattled the windows.\n\n"
    "Engineers arrived a week later with crates of equipment. They were young, polite and "
    "in a hurry. One of them, a tall man with ink on his fingers, showed her the new "
    "beacon: a sealed cylinder with a battery, a sensor that measured the light outside, "
    "and a clockwork timer as a backup. \"It will run for two years without anyone "
    "touching it,\" he said proudly. Ada asked what would happen if a gull built a nest "
    "on top of it, and he did not have an answer.\n\n"
    "To check the timer, the engineers wrote a short program on a portable computer:\n\n"
    "def next_flash(t, period=12.5, offset=3.0):\n"
    "    # seconds until the next flash after time t\n"
    "    phase = (t - offset) % period\n"
    "    return period - phase if phase > 0 else 0.0\n\n"
    "for t in range(0, 60, 10):\n"
    "    print(t, round(next_flash(t), 2))\n\n"
    "The numbers scrolled past on the little screen: 0, 10, 20, 30, 40 and 50 seconds, "
    "each with its answer. Ada watched them with polite interest and then went back to "
    "her packing. On her last evening she walked along the beach at low tide. The sand "
    "was firm and ribbed by the water, and the pools between the rocks held crabs, "
    "starfish and a single lost shoe. She thought about the ships she had recorded in "
    "the logbook over the years, more than nine thousand of them by her own count, and "
    "about the three that had not made it past the reef before the lamp was built. "
    "When she reached the end of the spit she turned around and looked back at the "
    "tower. The new beacon blinked once, twice, three times, exactly on schedule, and "
    "for the first time in twenty-seven years the light was not hers to keep. She "
    "stood there until her feet were cold, then walked home in the dark, and in the "
    "morning she caught the early train to the city."
)


def _kernels_available():
    from pyllama_q._pq import ffi, lib
    return ffi.string(lib.pq_kernels_available()).decode().split()


@contextlib.contextmanager
def _kernels(variant):
    """Run the body on one kernel table, then restore the one that was active."""
    import pyllama_q
    from pyllama_q._pq import lib
    before = pyllama_q.cpu_info()["kernels"]
    assert lib.pq_kernels_select(variant.encode()) == 0, variant
    try:
        yield
    finally:
        assert lib.pq_kernels_select(before.encode()) == 0


def _kl_top1(ref_logits, ours):
    """Mean over positions of KL(ref || ours) in nats, and top-1 agreement."""
    lr = torch.log_softmax(torch.as_tensor(ref_logits, dtype=torch.float64), -1)
    lo = torch.log_softmax(torch.as_tensor(ours, dtype=torch.float64), -1)
    kl = (lr.exp() * (lr - lo)).sum(-1)
    top1 = (lr.argmax(-1) == lo.argmax(-1)).double().mean()
    return kl.mean().item(), kl.max().item(), top1.item()


def _unpermute(w, n_head):
    """Undo the converter's q/k row permutation: GGUF stores the two halves of
    each head's rotary pairs interleaved, HF keeps them as halves."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantized(reader):
    """name -> float32 numpy array in numpy orientation (rows, cols)."""
    out = {}
    for t in reader.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = np.ascontiguousarray(a.reshape(tuple(reversed([int(d) for d in t.shape]))),
                                           dtype=np.float32)
    return out


def _field_value(f):
    return f.contents()


@pytest.fixture(scope="module")
def reference(sample_model, tmp_path_factory):
    return build_reference(sample_model, tmp_path_factory.mktemp("f32"))


def build_reference(sample_model, tmp_dir):
    """Tokens of TEXT, reference logits for them, the reference greedy
    continuation, and the path of an F32 copy of the sample model."""
    torch.set_num_threads(1)
    reader = gguf.GGUFReader(sample_model)
    md = {k: _field_value(f) for k, f in reader.fields.items()}
    W = _dequantized(reader)

    # The F32 copy: every tensor dequantized, all metadata copied.
    f32_path = os.path.join(tmp_dir, "smollm2-f32.gguf")
    w = gguf.GGUFWriter(str(f32_path), md["general.architecture"])
    for k, f in reader.fields.items():
        if k.startswith("GGUF.") or k in ("general.architecture", "general.file_type"):
            continue
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(k, md[k], f.types[0], sub_type=sub)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in reader.tensors:
        w.add_tensor(t.name, W[t.name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # The reference model from the same weights.
    n_heads = int(md["llama.attention.head_count"])
    n_kv = int(md["llama.attention.head_count_kv"])
    dim = int(md["llama.embedding_length"])
    cfg = transformers.LlamaConfig(
        vocab_size=W["token_embd.weight"].shape[0], hidden_size=dim,
        intermediate_size=int(md["llama.feed_forward_length"]),
        num_hidden_layers=int(md["llama.block_count"]), num_attention_heads=n_heads,
        num_key_value_heads=n_kv, head_dim=dim // n_heads,
        rms_norm_eps=float(md["llama.attention.layer_norm_rms_epsilon"]),
        rope_theta=float(md["llama.rope.freq_base"]),
        max_position_embeddings=int(md["llama.context_length"]),
        tie_word_embeddings="output.weight" not in W, attention_bias=False, mlp_bias=False)
    model = transformers.LlamaForCausalLM(cfg).to(torch.float32).eval()
    sd = {"model.embed_tokens.weight": W["token_embd.weight"],
          "model.norm.weight": W["output_norm.weight"],
          "lm_head.weight": W.get("output.weight", W["token_embd.weight"])}
    hf_names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
                "ffn_norm": "post_attention_layernorm"}
    for i in range(cfg.num_hidden_layers):
        for g, h in hf_names.items():
            a = W[f"blk.{i}.{g}.weight"]
            if g == "attn_q":
                a = _unpermute(a, n_heads)
            elif g == "attn_k":
                a = _unpermute(a, n_kv)
            sd[f"model.layers.{i}.{h}.weight"] = a
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=False)
    assert not unexpected and all("rotary" in k or k == "lm_head.weight" for k in missing)

    tok = transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(sample_model), gguf_file=os.path.basename(sample_model))
    ids = tok(TEXT)["input_ids"]
    assert len(ids) >= 200, len(ids)
    # The long sequence starts with ids, so its first len(ids) logits are
    # those of the short one (causal attention).
    long_ids = ids + tok(MORE_TEXT)["input_ids"]
    assert len(long_ids) >= 900, len(long_ids)
    with torch.no_grad():
        long_logits = model(torch.tensor([long_ids])).logits[0].double().numpy()
        x = torch.tensor([ids])
        gen = model.generate(x, max_new_tokens=N_GEN, do_sample=False,
                             attention_mask=torch.ones_like(x))[0, len(ids):].tolist()
    return dict(ids=ids, logits=long_logits[:len(ids)], gen=gen, tok=tok, f32_path=f32_path,
                long_ids=long_ids, long_logits=long_logits)


def _ours(path, ids, n_gen=0):
    """All logits for ids, then a greedy continuation of n_gen tokens."""
    with Weights(path, n_threads=2) as w, KVContext(w, len(ids) + n_gen + 1) as c:
        logits = c.eval(ids, 0, all_logits=True)
        gen, nxt = [], int(logits[-1].argmax())
        for i in range(n_gen):
            gen.append(nxt)
            nxt = int(c.eval([nxt], len(ids) + i).argmax())
    return logits, gen


def test_f32_copy_matches_transformers(reference):
    ref = reference
    logits, gen = _ours(ref["f32_path"], ref["ids"], N_GEN)
    kl_mean, kl_max, top1 = _kl_top1(ref["logits"], logits)
    print(f"F32 copy: n={len(ref['ids'])} mean KL {kl_mean:.3g} max KL {kl_max:.3g} top1 {top1:.4f}")
    # Measured (288 tokens, F16 KV cache, the default): scalar kernels mean KL
    # 3.65e-7, max KL 6.1e-6; avx512vnni 3.38e-7, 4.3e-6; top-1 1.0 both.
    # Bounds ~5-10x above.
    assert kl_mean < 2e-6
    assert kl_max < 5e-5
    assert top1 == 1.0
    assert gen == ref["gen"], (ref["tok"].decode(gen), ref["tok"].decode(ref["gen"]))


# Kernel tables the Q4_1 check runs on: the one chosen at start-up (what
# users get here) and every other SIMD table this CPU can run. The scalar twin
# is left out for time (~1 min per 913-token pass); its last measured mean KL
# is in the comment below.
_AVAILABLE = [v for v in _kernels_available() if v != "scalar"]


@pytest.mark.parametrize("variant", _AVAILABLE)
def test_q4_1_file_close_to_transformers(reference, sample_model, variant):
    ref = reference
    with _kernels(variant):
        logits, _ = _ours(sample_model, ref["long_ids"])
    kl_mean, kl_max, top1 = _kl_top1(ref["long_logits"], logits)
    n = len(ref["long_ids"])
    print(f"Q4_1 file ({variant}): n={n} mean KL {kl_mean:.4g} max KL {kl_max:.3g} top1 {top1:.4f}")
    # llama.cpp's own numbers on this file and these 913 tokens, measured once
    # with llama-cpp-python 0.3.36 (built from source, AVX-512):
    # Llama(model_path, logits_all=True, n_ctx=2048, n_batch=512,
    # n_threads=1).eval(long_ids), scored against this same reference: mean KL
    # 2.610e-3, max KL 0.0180, top-1 868/913.
    # Ours moves with the summation order of exact-to-rounding kernels, because
    # the activations are re-quantized to 8 bits before every matmul and one
    # ulp can flip a rounding there: measured mean KL 2.50e-3 to 2.67e-3 and
    # top-1 872 to 883 across kernel tables and across commits that changed
    # only summation order (the attention kernels, the SIMD SiLU, the
    # interleaved prompt GEMMs; scalar 2.620e-3 / 882 after the attention
    # change). So the bound is llama.cpp's mean KL plus 3 %, and its top-1.
    # (On the first 288 tokens alone top-1 swung between 271 and 278 with the
    # summation order, against llama.cpp's 272: too few positions to rank two
    # engines, hence the longer text.)
    assert n == 913
    assert kl_mean <= 2.610e-3 * 1.03
    assert round(top1 * n) >= 868
