"""Byte-level BPE tokenizer (GGUF tokenizer.ggml.model = "gpt2").

GPT-2's scheme, used by LLaMA 3, SmolLM, Qwen2 and many more:
  1. a pre-tokenizer (regexes chosen by tokenizer.ggml.pre) cuts the text
     into words; a word never merges with its neighbours;
  2. each word's UTF-8 bytes are spelled with GPT-2's printable byte alphabet
     (bytes 0x21-0x7E, 0xA1-0xAC, 0xAE-0xFF stand for themselves, the other
     68 bytes for U+0100 upward, in byte order);
  3. repeatedly merge the adjacent pair with the lowest rank in
     tokenizer.ggml.merges until none is left; look up each part's id.
"ignore_merges" pre-tokenizers (LLaMA 3) take a word that is a whole
vocabulary entry directly, as HF tokenizers does for them.
Results are cached per word. No normalisation is applied to the text.

Needs the `regex` package: the patterns use \\p{L} / \\p{N} classes, which
Python's `re` lacks.
"""
import heapq

import regex

from .errors import FormatError, UnsupportedError
from .tokenizer import Tokenizer

# GPT-2's ByteLevel pattern (HF ByteLevel pre-tokenizer with use_regex=True).
PAT_GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# LLaMA 3's pattern (tiktoken cl100k-style: digit runs of at most 3).
PAT_LLAMA3 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
              r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Qwen2's pattern: as LLaMA 3 but one digit at a time.
PAT_QWEN2 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
             r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
PAT_DIGIT = r"""\p{N}"""

# Words longer than this (in bytes) are merged with a heap instead of the
# simple pass-per-merge loop, which is faster for the short words that dominate.
LONG_WORD = 48

# tokenizer.ggml.pre -> (regexes applied one after the other, ignore_merges, add_bos default).
# Each regex cuts every piece so far into its matches and the gaps between them.
PRE_TOKENIZERS = {}
for _names, _spec in (
        (("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"), ((PAT_LLAMA3,), True, True)),
        (("smollm", "starcoder", "refact", "codeshell", "command-r"), ((PAT_DIGIT, PAT_GPT2), False, False)),
        (("qwen2",), ((PAT_QWEN2,), False, False)),
        # "default" is what converters write when they did not recognise the
        # pre-tokenizer; GPT-2's pattern is the base all others derive from.
        # (llama.cpp instead adds extra punctuation/digit splits for it.)
        (("gpt2", "gpt-2", "default", "phi-2", "mpt", "olmo"), ((PAT_GPT2,), False, False)),
):
    for _n in _names:
        PRE_TOKENIZERS[_n] = _spec


def _byte_alphabet():
    """GPT-2's byte -> printable character table, as a list of 256 str."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = [""] * 256
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = _byte_alphabet()
CHAR_TO_BYTE = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
# str.translate table taking a latin-1 decoded byte string to the alphabet.
_LATIN1_TO_ALPHABET = {b: c for b, c in enumerate(BYTE_TO_CHAR)}


class BPETokenizer(Tokenizer):
    def __init__(self, md):
        super().__init__(md)
        self.pre = md.get("tokenizer.ggml.pre") or "default"
        spec = PRE_TOKENIZERS.get(self.pre)
        if spec is None:
            raise UnsupportedError(f"tokenizer.ggml.pre = {self.pre!r}: no pre-tokenizer for it "
                                   f"(known: {', '.join(sorted(PRE_TOKENIZERS))})")
        self._patterns = [regex.compile(p) for p in spec[0]]
        self.ignore_merges = spec[1]
        self._add_bos_default = spec[2]
        merges = md.get("tokenizer.ggml.merges")
        if merges is None:
            raise FormatError("tokenizer.ggml.merges: missing (a 'gpt2' tokenizer needs merges)")
        self._merges = merges
        self._ranks = None    # "a b" -> rank, built on first encode
        self._vocab = None    # token text -> id
        self._cache = {}      # word (in the byte alphabet) -> tuple of ids
        self._bytes = {}      # id -> bytes, filled as tokens are decoded

    def _default_add_bos(self, md):
        spec = PRE_TOKENIZERS.get(md.get("tokenizer.ggml.pre") or "default")
        return bool(spec and spec[2])

    def _tables(self):
        if self._ranks is None:
            # Keyed by the merge line itself ("a b"): no splitting of 100k+
            # strings. Built from the end so the first of duplicates wins.
            m, t = self._merges, self.tokens
            self._ranks = dict(zip(reversed(m), range(len(m) - 1, -1, -1)))
            self._vocab = dict(zip(reversed(t), range(len(t) - 1, -1, -1)))
        return self._ranks, self._vocab

    def _normal_bytes(self, i):
        b = self._bytes.get(i)
        if b is None:
            try:
                b = bytes(CHAR_TO_BYTE[c] for c in self.tokens[i])
            except KeyError:
                b = self.tokens[i].encode("utf-8")  # not in the byte alphabet: take it as text
            self._bytes[i] = b
        return b

    def _words(self, text):
        pieces = [text]
        for pat in self._patterns:
            nxt = []
            for piece in pieces:
                pos = 0
                for m in pat.finditer(piece):
                    s, e = m.span()
                    if s > pos:
                        nxt.append(piece[pos:s])
                    if e > s:
                        nxt.append(piece[s:e])
                    pos = e
                if pos < len(piece):
                    nxt.append(piece[pos:])
            pieces = nxt
        return pieces

    def _bpe(self, word, ranks, vocab):
        """Ids of one pre-tokenized word already spelled in the byte alphabet."""
        if self.ignore_merges:
            i = vocab.get(word)
            if i is not None:
                return (i,)
        parts = list(word) if len(word) <= LONG_WORD else self._merge_long(word, ranks)
        while len(parts) > 1:
            best = None
            best_rank = None
            for j in range(len(parts) - 1):
                r = ranks.get(parts[j] + " " + parts[j + 1])
                if r is not None and (best_rank is None or r < best_rank):
                    best_rank, best = r, j
            if best is None:
                break
            a, b = parts[best], parts[best + 1]
            merged = a + b
            # Merge every occurrence of (a, b), left to right, in one pass:
            # the same result as merging them one at a time by position.
            new = []
            j = 0
            n = len(parts)
            while j < n:
                if j < n - 1 and parts[j] == a and parts[j + 1] == b:
                    new.append(merged)
                    j += 2
                else:
                    new.append(parts[j])
                    j += 1
            parts = new
        ids = []
        for p in parts:
            i = vocab.get(p)
            if i is None:
                if self.unk_id is None:
                    raise FormatError(f"tokenizer.ggml.tokens: no token for {p!r} and no unknown token")
                i = self.unk_id
            ids.append(i)
        return tuple(ids)

    @staticmethod
    def _merge_long(word, ranks):
        """Merge a long word with a heap of (rank, position): O(n log n) where
        the pass-per-merge loop in _bpe is O(n^2) (base64 blobs, long runs).
        Lowest rank first, ties leftmost first, as HF tokenizers orders them."""
        n = len(word)
        sym = list(word)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            r = ranks.get(sym[i] + " " + sym[i + 1])
            if r is not None:
                heap.append((r, i))
        heapq.heapify(heap)
        push, pop = heapq.heappush, heapq.heappop
        while heap:
            r, i = pop(heap)
            j = nxt[i]
            # Stale entry: i was merged away, or its right neighbour changed.
            if not sym[i] or j >= n or ranks.get(sym[i] + " " + sym[j]) != r:
                continue
            sym[i] += sym[j]
            sym[j] = ""
            k = nxt[j]
            nxt[i] = k
            if k < n:
                prv[k] = i
                r2 = ranks.get(sym[i] + " " + sym[k])
                if r2 is not None:
                    push(heap, (r2, i))
            h = prv[i]
            if h >= 0:
                r2 = ranks.get(sym[h] + " " + sym[i])
                if r2 is not None:
                    push(heap, (r2, h))
        # Returned parts have no mergeable pair left, so _bpe's loop ends at once.
        return [x for x in sym if x]

    def _encode_text(self, text, out, after_special):
        ranks, vocab = self._tables()
        cache = self._cache
        for w in self._words(text):
            key = w.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_ALPHABET)
            ids = cache.get(key)
            if ids is None:
                ids = self._bpe(key, ranks, vocab)
                if len(cache) < 100_000:
                    cache[key] = ids
            out.extend(ids)
