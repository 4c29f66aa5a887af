"""vocab.py: tokenizer files -> tokenizer.ggml.* metadata.

What it is: three readers giving one Vocab (tokens, scores, token types,
merges, special ids, flags, chat template):
  - SentencePiece tokenizer.model (LLaMA 1/2, Code LLaMA, TinyLlama, Alpaca)
    -> tokenizer.ggml.model "llama", through the sentencepiece package;
  - tokenizer.json byte-level BPE (LLaMA 3 HF, SmolLM) -> "gpt2";
  - tiktoken ranks (Meta's LLaMA 3 tokenizer.model: base64 token + rank per
    line) -> "gpt2", with merges recovered from the ranks and LLaMA 3's 256
    special tokens appended.
What it is not: a tokenizer. Nothing here encodes text.
"""
import base64
import json
import os

from .errors import ConvertError

# llama.cpp token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


class Vocab:
    def __init__(self, model, tokens, token_type, scores=None, merges=None, pre="default"):
        self.model, self.tokens, self.token_type = model, tokens, token_type
        self.scores, self.merges, self.pre = scores, merges, pre
        self.special = {}          # bos/eos/eot/eom/unknown/padding -> id
        self.add_bos, self.add_eos = None, None
        self.chat_template = None

    def id_of(self, text):
        if not hasattr(self, "_index"):
            self._index = {t: i for i, t in enumerate(self.tokens)}
        return self._index.get(text)

    def pad_to(self, n):
        """Fill up to the model's vocab size with [PAD{id}] tokens, as llama.cpp does."""
        for i in range(len(self.tokens), n):
            self.tokens.append(f"[PAD{i}]")
            self.token_type.append(UNUSED)
            if self.scores is not None:
                self.scores.append(-1000.0)
        if hasattr(self, "_index"):
            del self._index


# ---- SentencePiece ----------------------------------------------------------------


def _varint(b, i):
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return v, i


def _spm_piece_types(blob):
    """The type field of each ModelProto.pieces entry (field 1; in it type is
    field 3), read from the protobuf wire format: sentencepiece's Python API
    cannot tell USER_DEFINED pieces from normal ones."""
    types, i = [], 0
    while i < len(blob):
        key, i = _varint(blob, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(blob, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = _varint(blob, i)
            if field == 1:
                sub, j, t = blob[i:i + n], 0, NORMAL
                while j < len(sub):
                    k2, j = _varint(sub, j)
                    f2, w2 = k2 >> 3, k2 & 7
                    if w2 == 0:
                        v, j = _varint(sub, j)
                        if f2 == 3:
                            t = v
                    elif w2 == 2:
                        m, j = _varint(sub, j)
                        j += m
                    elif w2 == 5:
                        j += 4
                    elif w2 == 1:
                        j += 8
                    else:
                        raise ValueError("bad wire type")
                types.append(t)
            i += n
        else:
            raise ValueError("bad wire type")
    return types


def load_sentencepiece(path):
    import sentencepiece

    base = os.path.basename(path)
    sp = sentencepiece.SentencePieceProcessor()
    try:
        with open(path, "rb") as f:
            blob = f.read()
        sp.LoadFromSerializedProto(blob)
        types = _spm_piece_types(blob)
    except (OSError, RuntimeError, ValueError, IndexError) as e:
        raise ConvertError(f"{base}: not a SentencePiece model ({str(e).splitlines()[0][:80]})") from None
    n = sp.GetPieceSize()
    if len(types) != n:
        raise ConvertError(f"{base}: SentencePiece model has {n} pieces but {len(types)} entries")
    tokens = [sp.IdToPiece(i) for i in range(n)]
    scores = [float(sp.GetScore(i)) for i in range(n)]
    ttype = [t if t in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL for t in types]
    v = Vocab("llama", tokens, ttype, scores=scores)
    for key, fn in (("bos", sp.bos_id), ("eos", sp.eos_id), ("unknown", sp.unk_id), ("padding", sp.pad_id)):
        if fn() >= 0:
            v.special[key] = fn()
    v.add_bos, v.add_eos = True, False
    # Code LLaMA infill pieces
    for key, piece in (("fim_pre", "▁<PRE>"), ("fim_suf", "▁<SUF>"), ("fim_mid", "▁<MID>"), ("eot", "▁<EOT>")):
        if v.id_of(piece) is not None:
            v.special[key] = v.id_of(piece)
    return v


def add_extra_tokens(v, added):
    """Tokens past the SentencePiece model (Alpaca's [PAD], added_tokens.json):
    {text: (id, special)}; ids must continue the vocab."""
    for text, (i, special) in sorted(added.items(), key=lambda kv: kv[1][0]):
        if i < len(v.tokens):
            if v.tokens[i] != text:
                raise ConvertError(f"added token {text!r} has id {i}, already the piece {v.tokens[i]!r}")
            continue
        if i != len(v.tokens):
            v.pad_to(i)
        v.tokens.append(text)
        v.token_type.append(CONTROL if special else USER_DEFINED)
        if v.scores is not None:
            v.scores.append(-1000.0)
    if hasattr(v, "_index"):
        del v._index


# ---- byte-level BPE (tokenizer.json) -------------------------------------------------


def bytes_to_unicode():
    """GPT-2's printable stand-ins for the 256 byte values (a published mapping)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _guess_pre(tj):
    """tokenizer.ggml.pre from the pre-tokenizer description (llama.cpp itself
    hashes the tokenizer's output; we read the regex/steps it would detect)."""
    text = json.dumps(tj.get("pre_tokenizer") or {})
    if "\\\\p{N}{1,3}" in text and "(?i:'s|'t|'re|'ve|'m|'ll|'d)" in text:
        return "llama-bpe"
    pre = tj.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if isinstance(pre, dict) else []
    kinds = [s.get("type") for s in steps if isinstance(s, dict)]
    if "Digits" in kinds and "ByteLevel" in kinds and \
            any(s.get("individual_digits") for s in steps if isinstance(s, dict)):
        return "smollm"
    if kinds == ["ByteLevel"]:
        return "gpt-2"
    return "default"


def load_tokenizer_json(path):
    base = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as f:
            tj = json.load(f)
        model = tj["model"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConvertError(f"{base}: not a tokenizer.json (no model section)") from None
    if model.get("type") != "BPE":
        raise ConvertError(f"{base}: tokenizer model {model.get('type')!r} is not BPE")
    vocab = dict(model.get("vocab", {}))
    added = {a["content"]: (int(a["id"]), bool(a.get("special"))) for a in tj.get("added_tokens", [])}
    for text, (i, _) in added.items():
        vocab[text] = i
    n = max(vocab.values()) + 1 if vocab else 0
    tokens = [None] * n
    for text, i in vocab.items():
        tokens[i] = text
    ttype = [NORMAL] * n
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i], ttype[i] = f"[PAD{i}]", UNUSED
    for text, (i, special) in added.items():
        ttype[i] = CONTROL if special else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    v = Vocab("gpt2", tokens, ttype, merges=merges, pre=_guess_pre(tj))
    v.add_bos = _template_adds_bos(tj)
    return v


def _template_adds_bos(tj):
    pp = tj.get("post_processor") or {}
    steps = pp.get("processors", [pp]) if isinstance(pp, dict) else []
    for s in steps:
        if isinstance(s, dict) and s.get("type") == "TemplateProcessing":
            single = s.get("single") or []
            return bool(single) and "SpecialToken" in single[0]
    return False


# ---- tiktoken ranks (Meta's LLaMA 3 tokenizer.model) ------------------------------------


def is_tiktoken(path):
    try:
        with open(path, "rb") as f:
            line = f.readline(4096).split()
        return len(line) == 2 and line[1].isdigit() and base64.b64decode(line[0], validate=True) is not None
    except (OSError, ValueError):
        return False


def _merges_from_ranks(ranks):
    """BPE merges recovered from tiktoken ranks, by the recipe that produced
    LLaMA 3's tokenizer.json: every split of a token into two tokens of the
    table is a merge, ordered by the merged token's rank, then by the ranks of
    the left and right parts."""
    merges = []
    for tok, rank in ranks.items():
        local = []
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            if left in ranks and right in ranks:
                local.append((rank, ranks[left], ranks[right], left, right))
        merges.extend(local)
    merges.sort(key=lambda m: m[:3])
    return [(m[3], m[4]) for m in merges]


def llama3_special_tokens(scaled_rope):
    """Meta's LLaMA 3 (and 3.1, when scaled_rope) special tokens, ids from 128000 on."""
    if scaled_rope:
        named = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                 "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                 "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
        first = 3
    else:
        named = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                 "<|reserved_special_token_1|>", "<|reserved_special_token_2|>",
                 "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
                 "<|reserved_special_token_4|>", "<|eot_id|>"]
        first = 5
    return named + [f"<|reserved_special_token_{first + i}|>" for i in range(256 - len(named))]


LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


_TIKTOKEN_CACHE = {}   # sha256 of the file -> (tokens, merges): shards of one run share it


def load_tiktoken(path, scaled_rope=False):
    import hashlib

    base = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise ConvertError(f"{base}: {e.strerror}") from None
    key = hashlib.sha256(blob).hexdigest()
    if key not in _TIKTOKEN_CACHE:
        _TIKTOKEN_CACHE.clear()
        _TIKTOKEN_CACHE[key] = _parse_tiktoken(blob, base)
    tokens, merges = _TIKTOKEN_CACHE[key]
    n = len(tokens)
    specials = llama3_special_tokens(scaled_rope)
    ttype = [NORMAL] * n + [CONTROL] * len(specials)
    v = Vocab("gpt2", tokens + specials, ttype, merges=list(merges), pre="llama-bpe")
    v.special.update(bos=v.id_of("<|begin_of_text|>"), eos=v.id_of("<|end_of_text|>"),
                     eot=v.id_of("<|eot_id|>"))
    if scaled_rope:
        v.special["eom"] = v.id_of("<|eom_id|>")
    v.add_bos, v.add_eos = True, False
    v.chat_template = LLAMA3_CHAT_TEMPLATE
    return v


def _parse_tiktoken(blob, base):
    ranks = {}
    ln = 0
    try:
        for ln, line in enumerate(blob.splitlines(), 1):
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok, validate=True)] = int(rank)
    except ValueError as e:
        raise ConvertError(f"{base}: line {ln}: not a tiktoken ranks file ({e})") from None
    n = len(ranks)
    if sorted(ranks.values()) != list(range(n)):
        raise ConvertError(f"{base}: tiktoken ranks are not 0..{n - 1}")
    b2u = bytes_to_unicode()
    by_rank = sorted(ranks, key=ranks.get)
    tokens = ["".join(b2u[b] for b in t) for t in by_rank]
    merges = [" ".join("".join(b2u[c] for c in p) for p in pair) for pair in _merges_from_ranks(ranks)]
    return tokens, merges


# ---- a model directory --------------------------------------------------------------


def _read_json(path):
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError:
        raise ConvertError(f"{os.path.basename(path)}: not valid JSON") from None


def _token_text(t):
    if isinstance(t, dict):
        return t.get("content")
    return t


def load_hf_vocab(d, config):
    """The vocab of a Hugging Face model directory (tokenizer.model first, as
    llama.cpp does, then tokenizer.json)."""
    tcfg = _read_json(os.path.join(d, "tokenizer_config.json"))
    spm = os.path.join(d, "tokenizer.model")
    tjp = os.path.join(d, "tokenizer.json")
    if os.path.exists(spm) and not is_tiktoken(spm):
        v = load_sentencepiece(spm)
        added = {}
        for k, a in (tcfg.get("added_tokens_decoder") or {}).items():
            added[a["content"]] = (int(k), bool(a.get("special")))
        for text, i in _read_json(os.path.join(d, "added_tokens.json")).items():
            added.setdefault(text, (int(i), True))
        add_extra_tokens(v, added)
    elif os.path.exists(tjp):
        v = load_tokenizer_json(tjp)
    elif os.path.exists(spm):
        v = load_tiktoken(spm, scaled_rope=bool(config.get("rope_scaling")))
    else:
        raise ConvertError(f"{d}: missing tokenizer (no tokenizer.model or tokenizer.json)")
    # special tokens: names from tokenizer_config / special_tokens_map, else ids from config
    stm = _read_json(os.path.join(d, "special_tokens_map.json"))
    gen = _read_json(os.path.join(d, "generation_config.json"))
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"),
                      ("padding", "pad_token")):
        text = _token_text(tcfg.get(name)) or _token_text(stm.get(name))
        i = v.id_of(text) if text else None
        if i is None:
            cid = config.get(f"{'pad' if key == 'padding' else key}_token_id", gen.get(f"{key}_token_id"))
            if isinstance(cid, list):
                cid = cid[0] if cid else None
            i = cid if isinstance(cid, int) and 0 <= cid < len(v.tokens) else None
        if i is not None:
            v.special[key] = i
    for text in ("<|eot_id|>", "<|im_end|>", "<|end|>"):
        if v.id_of(text) is not None:
            v.special["eot"] = v.id_of(text)
            break
    if v.id_of("<|eom_id|>") is not None:
        v.special["eom"] = v.id_of("<|eom_id|>")
    if "add_bos_token" in tcfg:
        v.add_bos = bool(tcfg["add_bos_token"])
    if "add_eos_token" in tcfg:
        v.add_eos = bool(tcfg["add_eos_token"])
    tmpl = tcfg.get("chat_template")
    if isinstance(tmpl, list):
        tmpl = next((t["template"] for t in tmpl if t.get("name") == "default"), None)
    jinja = os.path.join(d, "chat_template.jinja")
    if tmpl is None and os.path.exists(jinja):
        with open(jinja, encoding="utf-8") as f:
            tmpl = f.read()
    if tmpl:
        v.chat_template = tmpl
    return v


def load_meta_vocab(d, scaled_rope):
    path = os.path.join(d, "tokenizer.model")
    if not os.path.exists(path):
        path = os.path.join(os.path.dirname(os.path.abspath(d)), "tokenizer.model")
        if not os.path.exists(path):
            raise ConvertError(f"{d}: missing tokenizer.model")
    if is_tiktoken(path):
        return load_tiktoken(path, scaled_rope)
    return load_sentencepiece(path)
