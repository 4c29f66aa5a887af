"""Reference tokenizers for tests, rebuilt from real GGUF vocabularies.

Importable helper (not a test module): `import vocabs` from a test in
tests/ (pytest puts that folder on sys.path). Nothing here uses pyllama_q's
own tokenizer code, so what it builds is an independent reference.

Known reference quirks (measured with transformers 5.24, tokenizers 0.23):
  - transformers' LlamaTokenizer built from a tokenizer.model (needs
    protobuf) differs from sentencepiece on leading / repeated spaces; use
    spm_processor() as the SentencePiece reference.
  - transformers' GGUF loader (from_pretrained(..., gguf_file=)) builds
    SmolLM2's pre-tokenizer without the single-digit split its
    tokenizer.json has; use hf_tokenizer() for text with numbers.

Sources of vocabularies
  - the sample model (SmolLM2-135M-Instruct, byte-level BPE, pre "smollm");
  - llama.cpp's vocab-only GGUFs (ggml-vocab-<name>.gguf, with .inp/.out
    test pairs produced by the HF tokenizers), which ship in the
    llama-cpp-python source distribution under vendor/llama.cpp/models/.
    `vocab_path(name)` fetches that sdist once with pip (or takes the file
    $PYLLAMA_Q_LCP_SDIST names) and keeps the vocab files in
    <pyllama-q cache>/llama-vocabs/ (~80 MB).

API
  vocab_path(name) -> str              path of ggml-vocab-<name>.gguf ("llama-spm",
                                        "llama-bpe", "gpt-2", "qwen2", "starcoder", "phi-3", ...)
  vocab_cases(name) -> [(text, ids)]   llama.cpp's .inp/.out pairs for that vocab
  read_metadata(path) -> dict          GGUF metadata in GGUFFile.metadata's shape
                                        (str, numpy arrays, list[str]); tokenizer.* and general.*
  spm_model_bytes(md) -> bytes         a SentencePiece ModelProto (tokenizer.model) for a
                                        "llama" vocab, written with a tiny protobuf encoder
  write_spm_model(md, path)            the same, to a file
  spm_processor(md)                    sentencepiece.SentencePieceProcessor loaded from it
  hf_tokenizer(md)                     tokenizers.Tokenizer for a "gpt2" vocab, with the
                                        pre-tokenizer its family's tokenizer.json uses
  write_hf_tokenizer_json(md, path)    the same, saved as tokenizer.json
  write_hf_tokenizer_dir(md, dir)      a model-repo style folder: tokenizer.model or
                                        tokenizer.json, plus tokenizer_config.json (special
                                        tokens, add_bos/add_eos, chat_template)
  tiktoken_encoding(md)                tiktoken.Encoding for a LLaMA-3 vocab
  CONTROL, USER_DEFINED, ...           token_type values
"""
import glob
import os
import struct
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

LCP_PACKAGE = "llama-cpp-python"
VOCAB_DIR = "llama-vocabs"
_SEP = "\n__ggml_vocab_test__\n"


# ---- fetching llama.cpp's vocab files ---------------------------------------

def _cache_dir():
    from pyllama_q.sample import cache_dir
    return cache_dir()


def vocab_dir():
    """Directory holding the ggml-vocab-* files, fetched on first use."""
    d = os.path.join(_cache_dir(), VOCAB_DIR)
    if os.path.exists(os.path.join(d, "ggml-vocab-llama-spm.gguf")):
        return d
    with tempfile.TemporaryDirectory(dir=_cache_dir()) as tmp:
        # $PYLLAMA_Q_LCP_SDIST may name an already downloaded sdist.
        sdists = [p for p in [os.environ.get("PYLLAMA_Q_LCP_SDIST")] if p and os.path.exists(p)]
        if not sdists:
            # The sdist only (llama-cpp-python publishes no wheels on the index);
            # pip still prepares its metadata, which takes ~15 s, no compiling.
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--no-binary", LCP_PACKAGE, "-d", tmp, LCP_PACKAGE]
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            sdists = glob.glob(os.path.join(tmp, "llama_cpp_python-*.tar.gz"))
            if r.returncode != 0 or not sdists:
                last = (r.stdout.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"could not fetch the {LCP_PACKAGE} sdist with pip: {last}")
        part = os.path.join(tmp, VOCAB_DIR)
        os.makedirs(part)
        with tarfile.open(sdists[0]) as tf:
            for m in tf:
                base = os.path.basename(m.name)
                if m.isfile() and "/vendor/llama.cpp/models/" in m.name and base.startswith("ggml-vocab-"):
                    with tf.extractfile(m) as src, open(os.path.join(part, base), "wb") as out:
                        out.write(src.read())
        os.makedirs(os.path.dirname(d), exist_ok=True)
        if not os.path.exists(d):
            os.replace(part, d)  # atomic: a half-filled directory never has the final name
    return d


def vocab_path(name):
    p = os.path.join(vocab_dir(), f"ggml-vocab-{name}.gguf")
    if not os.path.exists(p):
        raise FileNotFoundError(p)
    return p


def vocab_cases(name):
    """[(text, expected ids)] from ggml-vocab-<name>.gguf.inp/.out (expected
    ids were produced by the model's HF tokenizer, without BOS/EOS)."""
    base = vocab_path(name)
    with open(base + ".inp", encoding="utf-8", newline="") as f:
        inp = f.read()
    with open(base + ".out", encoding="utf-8", newline="") as f:
        out = f.read()
    texts = inp.split(_SEP)  # every case ends with the separator line
    if texts and texts[-1] == "":
        texts.pop()
    lines = out.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(texts) != len(lines):
        raise ValueError(f"{base}: {len(texts)} inputs but {len(lines)} outputs")
    return [(t, [int(x) for x in l.split()]) for t, l in zip(texts, lines)]


# ---- reading metadata ---------------------------------------------------------

def read_metadata(path):
    """tokenizer.* and general.* metadata of a GGUF file, shaped like
    pyllama_q.gguf.GGUFFile(path).metadata: str, int/float/bool scalars,
    numpy arrays for numeric arrays, list[str] for string arrays."""
    try:
        from pyllama_q.gguf import GGUFFile
    except ImportError:
        GGUFFile = None
    if GGUFFile is not None:
        with GGUFFile(path) as g:
            return {k: v for k, v in g.metadata.items() if k.startswith(("tokenizer.", "general."))}
    import gguf

    r = gguf.GGUFReader(path)
    md = {}
    for k, f in r.fields.items():
        if not k.startswith(("tokenizer.", "general.")):
            continue
        t = f.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            if f.types[1] == gguf.GGUFValueType.STRING:
                md[k] = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            else:
                md[k] = np.concatenate([f.parts[i] for i in f.data]) if f.data else np.zeros(0)
        elif t == gguf.GGUFValueType.STRING:
            md[k] = bytes(f.parts[f.data[0]]).decode("utf-8")
        else:
            v = f.parts[f.data[0]][0]
            md[k] = bool(v) if t == gguf.GGUFValueType.BOOL else v.item()
    return md


# ---- SentencePiece tokenizer.model ------------------------------------------

def _varint(n):
    n &= (1 << 64) - 1  # negative int32 values are written as 10-byte varints
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(num, data):
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def _field_int(num, v):
    return _varint(num << 3 | 0) + _varint(int(v))


def _field_float(num, v):
    return _varint(num << 3 | 5) + struct.pack("<f", float(v))


def spm_model_bytes(md):
    """A sentencepiece ModelProto equivalent to LLaMA's tokenizer.model for a
    "llama" GGUF vocab: BPE model, byte fallback, identity normaliser, dummy
    prefix as tokenizer.ggml.add_space_prefix says, whitespace kept as is.
    Field numbers are those of sentencepiece_model.proto."""
    toks = md["tokenizer.ggml.tokens"]
    scores = md["tokenizer.ggml.scores"]
    types = md.get("tokenizer.ggml.token_type")
    unk_id = md.get("tokenizer.ggml.unknown_token_id", 0)
    parts = []
    for i, s in enumerate(toks):
        t = int(types[i]) if types is not None else NORMAL
        # sentencepiece wants exactly one UNKNOWN piece; some GGUFs type the
        # unk piece CONTROL and padding placeholders UNKNOWN (Phi-3).
        if i == unk_id:
            t = UNKNOWN
        elif t == UNKNOWN:
            t = CONTROL
        piece = _field_bytes(1, s.encode("utf-8")) + _field_float(2, scores[i]) + _field_int(3, t)
        parts.append(_field_bytes(1, piece))  # ModelProto.pieces = 1

    def opt(key, default):
        v = md.get(key)
        return default if v is None else int(v)

    trainer = b"".join([
        _field_int(3, 2),                   # model_type = BPE
        _field_int(4, len(toks)),           # vocab_size
        _field_int(25, 1),                  # split_digits (training only; as LLaMA's)
        _field_int(35, 1),                  # byte_fallback
        _field_int(40, opt("tokenizer.ggml.unknown_token_id", 0)),
        _field_int(41, opt("tokenizer.ggml.bos_token_id", -1)),
        _field_int(42, opt("tokenizer.ggml.eos_token_id", -1)),
        _field_int(43, opt("tokenizer.ggml.padding_token_id", -1)),
    ])
    add_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
    normalizer = b"".join([
        _field_bytes(1, b"identity"),       # name
        _field_int(3, int(add_prefix)),     # add_dummy_prefix
        _field_int(4, 0),                   # remove_extra_whitespaces
        _field_int(5, 1),                   # escape_whitespaces
    ])
    parts.append(_field_bytes(2, trainer))     # trainer_spec
    parts.append(_field_bytes(3, normalizer))  # normalizer_spec
    return b"".join(parts)


def write_spm_model(md, path):
    with open(path, "wb") as f:
        f.write(spm_model_bytes(md))


def spm_processor(md):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=spm_model_bytes(md))


# ---- HF tokenizers / tiktoken for byte-level BPE ------------------------------

# Pre-tokenizer regexes as the families' tokenizer.json files write them.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def hf_tokenizer(md):
    """tokenizers.Tokenizer equivalent to the family's tokenizer.json for a
    "gpt2" GGUF vocab. Control and user-defined tokens become added tokens
    (special=True for control ones). Encode with add_special_tokens=False;
    set `.encode_special_tokens = True` to treat special texts as plain text."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    toks = md["tokenizer.ggml.tokens"]
    types = md.get("tokenizer.ggml.token_type")
    pre = md.get("tokenizer.ggml.pre") or "default"
    vocab = {}
    for i, s in enumerate(toks):
        vocab.setdefault(s, i)
    merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)
    if pre in ("llama3", "llama-v3", "llama-bpe"):
        model = models.BPE(vocab=vocab, merges=merges, ignore_merges=True)
        pre_tok = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False), byte_level])
    elif pre == "qwen2":
        model = models.BPE(vocab=vocab, merges=merges)
        pre_tok = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False), byte_level])
    elif pre in ("smollm", "starcoder"):
        model = models.BPE(vocab=vocab, merges=merges)
        pre_tok = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    elif pre in ("gpt2", "gpt-2", "default"):
        model = models.BPE(vocab=vocab, merges=merges)
        pre_tok = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    else:
        raise ValueError(f"hf_tokenizer: no reference for tokenizer.ggml.pre = {pre!r}")
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tok
    tok.decoder = decoders.ByteLevel()
    if types is not None:
        added = []
        for i in np.nonzero((np.asarray(types) == CONTROL) | (np.asarray(types) == USER_DEFINED))[0]:
            added.append(AddedToken(toks[i], special=bool(types[i] == CONTROL), normalized=False))
        tok.add_tokens(added)
    return tok


def write_hf_tokenizer_json(md, path):
    hf_tokenizer(md).save(path)


def tiktoken_encoding(md):
    """tiktoken.Encoding for a LLaMA-3 vocab: normal tokens as mergeable
    ranks (rank = token id), control tokens as special tokens."""
    import tiktoken

    toks = md["tokenizer.ggml.tokens"]
    types = np.asarray(md["tokenizer.ggml.token_type"])
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    char_to_byte = {}
    extra = 0
    for b in range(256):
        if b in keep:
            char_to_byte[chr(b)] = b
        else:
            char_to_byte[chr(256 + extra)] = b
            extra += 1
    ranks, special = {}, {}
    for i, s in enumerate(toks):
        if types[i] == NORMAL:
            ranks[bytes(char_to_byte[c] for c in s)] = i
        else:
            special[s] = i
    return tiktoken.Encoding(name="llama3-gguf", pat_str=LLAMA3_SPLIT,
                             mergeable_ranks=ranks, special_tokens=special)


def write_hf_tokenizer_dir(md, dirpath):
    """An HF-style tokenizer folder for a GGUF vocab, as a model repo has it:
    tokenizer.model ("llama") or tokenizer.json ("gpt2"), plus
    tokenizer_config.json naming the special tokens, add_bos/add_eos and the
    chat template when the metadata has one. Returns dirpath."""
    import json

    os.makedirs(dirpath, exist_ok=True)
    toks = md["tokenizer.ggml.tokens"]
    model = md["tokenizer.ggml.model"]

    def tok_text(key):
        i = md.get(key)
        return toks[int(i)] if i is not None and 0 <= int(i) < len(toks) else None

    cfg = {
        "bos_token": tok_text("tokenizer.ggml.bos_token_id"),
        "eos_token": tok_text("tokenizer.ggml.eos_token_id"),
        "unk_token": tok_text("tokenizer.ggml.unknown_token_id"),
        "pad_token": tok_text("tokenizer.ggml.padding_token_id"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 30,
    }
    if model == "llama":
        write_spm_model(md, os.path.join(dirpath, "tokenizer.model"))
        cfg.update(tokenizer_class="LlamaTokenizer", legacy=True,
                   add_bos_token=bool(md.get("tokenizer.ggml.add_bos_token", True)),
                   add_eos_token=bool(md.get("tokenizer.ggml.add_eos_token", False)))
    elif model == "gpt2":
        tok = hf_tokenizer(md)
        add_bos = md.get("tokenizer.ggml.add_bos_token")
        if add_bos is None:
            add_bos = (md.get("tokenizer.ggml.pre") in ("llama3", "llama-v3", "llama-bpe"))
        if add_bos and cfg["bos_token"] is not None:
            from tokenizers import processors

            bos = cfg["bos_token"]
            bos_id = int(md["tokenizer.ggml.bos_token_id"])
            tok.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
        tok.save(os.path.join(dirpath, "tokenizer.json"))
        cfg.update(tokenizer_class="PreTrainedTokenizerFast")
    else:
        raise ValueError(f"write_hf_tokenizer_dir: tokenizer.ggml.model = {model!r} not handled")
    if md.get("tokenizer.chat_template"):
        cfg["chat_template"] = md["tokenizer.chat_template"]
    cfg = {k: v for k, v in cfg.items() if v is not None}
    with open(os.path.join(dirpath, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)
    return dirpath
