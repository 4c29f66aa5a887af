"""Tokenizers rebuilt from a GGUF file's `tokenizer.ggml.*` metadata.

`Tokenizer.from_metadata(md)` returns the implementation the file asks for:
  - "llama" -> SentencePiece-style BPE over scores (LLaMA 1/2, Code LLaMA,
    Mistral v0.1 ...), in tokenizer_spm.py; parity target: `sentencepiece`.
  - "gpt2"  -> byte-level BPE over merges (LLaMA 3, SmolLM, Qwen2, GPT-2 ...),
    in tokenizer_bpe.py; parity target: HF `tokenizers` / tiktoken.

This file holds what both share: the vocabulary tables, special-token ids,
splitting control / user-defined token texts out of the input, decoding, and
the streaming `Detokenizer`. It is not a chat-template engine and it does not
normalise text (no NFKC, no space clean-up on decode: decode(encode(t)) == t).

`md` is the metadata dict of a GGUF file as pyllama_q.gguf.GGUFFile gives it:
strings as str, numeric arrays as numpy arrays, string arrays as list[str].
"""
import codecs
import re

import numpy as np

from .errors import FormatError, UnsupportedError

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = 1, 2, 3, 4, 5, 6

# Control-token texts that end a turn or a document in the families we know
# (LLaMA 3, ChatML, LLaMA 2, GPT-2/SmolLM, Phi-3).
EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "</s>", "<|endoftext|>", "<|end|>")


def _opt_id(md, key, n_vocab):
    """An optional token-id key: None when absent or out of range (-1 is
    written by some converters for 'none')."""
    v = md.get(key)
    if v is None:
        return None
    v = int(v)
    return v if 0 <= v < n_vocab else None


class Tokenizer:
    """Base class: shared tables and decoding. Subclasses implement
    `_encode_text(text, out, after_special)` (append ids for plain text) and
    `_normal_bytes(id)` (the bytes a normal token stands for)."""

    def __init__(self, md):
        tokens = md.get("tokenizer.ggml.tokens")
        if tokens is None or len(tokens) == 0:
            raise FormatError("tokenizer.ggml.tokens: missing or empty")
        self.tokens = list(tokens)
        n = len(self.tokens)
        types = md.get("tokenizer.ggml.token_type")
        if types is None:
            types = np.full(n, TT_NORMAL, dtype=np.int32)
        types = np.asarray(types, dtype=np.int32)
        if types.shape != (n,):
            raise FormatError(f"tokenizer.ggml.token_type: {types.shape[0]} entries for {n} tokens")
        self.token_types = types
        self.n_vocab = n

        self.bos_id = _opt_id(md, "tokenizer.ggml.bos_token_id", n)
        self.eos_id = _opt_id(md, "tokenizer.ggml.eos_token_id", n)
        self.eot_id = _opt_id(md, "tokenizer.ggml.eot_token_id", n)
        self.eom_id = _opt_id(md, "tokenizer.ggml.eom_token_id", n)
        self.unk_id = _opt_id(md, "tokenizer.ggml.unknown_token_id", n)
        self.pad_id = _opt_id(md, "tokenizer.ggml.padding_token_id", n)
        self.add_bos = bool(md.get("tokenizer.ggml.add_bos_token", self._default_add_bos(md)))
        self.add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False))

        # Ids of the token types that get special treatment, as Python sets.
        self._special_ids = set(np.nonzero((types == TT_CONTROL) | (types == TT_UNKNOWN)
                                           | (types == TT_UNUSED))[0].tolist())
        eog = {i for i in (self.eos_id, self.eot_id, self.eom_id) if i is not None}
        for i in np.nonzero(types == TT_CONTROL)[0].tolist():
            if self.tokens[i] in EOG_TEXTS:
                eog.add(i)
        self.eog_ids = eog
        self._split_re = {}      # parse_special -> compiled regex or None, built lazily
        self._text_to_id = None  # built lazily by subclasses that need it

    def _default_add_bos(self, md):
        return False

    # ---- encoding -------------------------------------------------------

    def _splitter(self, parse_special):
        """Regex matching the token texts split out of raw text before the
        model sees it: user-defined tokens always, control (and unknown)
        tokens only when parse_special. Longest text first, so at a given
        position the longest token wins (leftmost-longest, as HF does)."""
        if parse_special not in self._split_re:
            ids = np.nonzero(self._split_mask(parse_special))[0].tolist()
            table = {}
            for i in ids:
                s = self.tokens[i]
                if s and s not in table:  # first id wins for duplicate texts
                    table[s] = i
            if table:
                alts = sorted(table, key=len, reverse=True)
                rx = re.compile("|".join(re.escape(s) for s in alts))
                self._split_re[parse_special] = (rx, table)
            else:
                self._split_re[parse_special] = None
        return self._split_re[parse_special]

    def _split_mask(self, parse_special):
        """Which token types the splitter matches in raw text."""
        t = self.token_types
        mask = (t == TT_USER_DEFINED)
        if parse_special:
            mask |= (t == TT_CONTROL) | (t == TT_UNKNOWN)
        return mask

    def encode(self, text, add_bos=None, parse_special=False):
        """Token ids of `text`. add_bos None = the file's default
        (tokenizer.ggml.add_bos_token); add_eos follows the file.
        parse_special=True turns control-token texts such as <|im_start|>
        into their ids (chat templates need this); user-defined tokens are
        always matched, as sentencepiece and HF do."""
        if not isinstance(text, str):
            raise TypeError(f"encode() wants str, got {type(text).__name__}")
        if add_bos is None:
            add_bos = self.add_bos
        try:
            return self._encode(text, add_bos, parse_special)
        except UnicodeEncodeError:  # lone surrogates have no UTF-8 form
            at = next(i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff")
            raise ValueError(f"encode(): text is not valid Unicode (lone surrogate at index {at})") from None

    def _encode(self, text, add_bos, parse_special):
        out = []
        if add_bos and self.bos_id is not None:
            out.append(self.bos_id)
        split = self._splitter(parse_special) if text else None
        if split is None:
            if text:
                self._encode_text(text, out, True)
        else:
            rx, table = split
            pos = 0
            after_special = True  # the start of the text counts as after a special token
            for m in rx.finditer(text):
                if m.start() > pos:
                    self._encode_text(text[pos:m.start()], out, after_special)
                out.append(table[m.group()])
                after_special = True
                pos = m.end()
            if pos < len(text):
                self._encode_text(text[pos:], out, after_special)
        if self.add_eos and self.eos_id is not None:
            out.append(self.eos_id)
        return out

    # ---- decoding -------------------------------------------------------

    def is_special(self, token_id):
        """True for control, unknown and unused tokens (what decode skips)."""
        return int(token_id) in self._special_ids

    def token_bytes(self, token_id):
        """The raw bytes token `token_id` stands for. Control / user-defined
        tokens give their text; byte tokens their byte; normal tokens their
        text with the model's space marker / byte mapping undone."""
        i = int(token_id)
        if not 0 <= i < self.n_vocab:
            raise IndexError(f"token id {i} out of range [0, {self.n_vocab})")
        t = self.token_types[i]
        if t == TT_BYTE:
            s = self.tokens[i]  # "<0xNN>"
            if len(s) != 6 or not s.startswith("<0x") or not s.endswith(">"):
                raise FormatError(f"tokenizer.ggml.tokens[{i}] = {s!r}: a byte token must read <0xNN>")
            try:
                return bytes((int(s[3:5], 16),))
            except ValueError:
                raise FormatError(f"tokenizer.ggml.tokens[{i}] = {s!r}: a byte token must read <0xNN>") from None
        if t == TT_NORMAL:
            return self._normal_bytes(i)
        return self.tokens[i].encode("utf-8")

    def _strips_first_space(self, token_id):
        """Whether the first emitted token loses one leading space on decode
        (SentencePiece's dummy prefix). Overridden by the SPM tokenizer."""
        return False

    def _piece(self, token_id, skip_special, first):
        """(bytes token_id adds to the text, `first` for the next token).
        `first` = no token has been emitted yet; skipped tokens leave it set.
        Shared by decode() and Detokenizer so that the two always agree."""
        if skip_special and int(token_id) in self._special_ids:
            return b"", first
        b = self.token_bytes(token_id)
        if first and b[:1] == b" " and self._strips_first_space(token_id):
            b = b[1:]
        return b, False

    def decode(self, ids, skip_special=True):
        """Text of `ids`; invalid UTF-8 becomes U+FFFD."""
        parts = []
        first = True
        for i in ids:
            b, first = self._piece(i, skip_special, first)
            parts.append(b)
        return b"".join(parts).decode("utf-8", "replace")

    def detokenizer(self, skip_special=True, at_start=True):
        """A fresh streaming Detokenizer for this tokenizer (see there)."""
        return Detokenizer(self, skip_special, at_start)

    # ---- construction ---------------------------------------------------

    @staticmethod
    def from_metadata(md):
        """The tokenizer a GGUF metadata dict describes."""
        model = md.get("tokenizer.ggml.model")
        if model is None:
            raise FormatError("tokenizer.ggml.model: missing")
        if model == "llama":
            from .tokenizer_spm import SPMTokenizer
            return SPMTokenizer(md)
        if model == "gpt2":
            from .tokenizer_bpe import BPETokenizer
            return BPETokenizer(md)
        raise UnsupportedError(f"tokenizer.ggml.model = {model!r}: only 'llama' (SentencePiece) "
                               f"and 'gpt2' (byte-level BPE) are supported")


class Detokenizer:
    """Streaming decode: feed(id) returns the text that is complete so far.

    Bytes of a multi-byte UTF-8 character split across tokens are held back
    until the character is complete; flush() returns what is left (a broken
    tail becomes U+FFFD, exactly as decode() would render it). The
    concatenation of all feed() results and flush() equals decode(ids).

    at_start=False says the ids continue earlier text (generation after a
    prompt): then the first token keeps its leading space even for
    SentencePiece, whose decode() drops it at the start of a text."""

    def __init__(self, tokenizer, skip_special=True, at_start=True):
        self._tok = tokenizer
        self._skip = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._first = bool(at_start)

    def feed(self, token_id):
        b, self._first = self._tok._piece(token_id, self._skip, self._first)
        return self._utf8.decode(b) if b else ""

    def flush(self):
        out = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return out
