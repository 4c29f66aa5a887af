"""SentencePiece-style BPE tokenizer (GGUF tokenizer.ggml.model = "llama").

The algorithm of LLaMA 1/2 and Code LLaMA's tokenizer.model (a SentencePiece
BPE model with byte fallback), as sentencepiece and llama.cpp run it:
  1. spaces become U+2581 "▁"; a "▁" is prepended when add_space_prefix
     (to the text, and to each text fragment that follows a special token);
  2. every character starts as its own symbol;
  3. repeatedly merge the adjacent pair whose concatenation is a vocabulary
     piece with the highest score (ties: leftmost pair first);
  4. a symbol left that is no piece (a character outside the vocabulary)
     becomes its UTF-8 bytes as <0xNN> byte tokens (or <unk> without them).
It is not SentencePiece's unigram model (T5, Gemma use that).
"""
import heapq
import re

import numpy as np

from .tokenizer import TT_BYTE, TT_NORMAL, TT_USER_DEFINED, Tokenizer
from .errors import FormatError

SPACE_MARK = "\u2581"  # "▁", SentencePiece's visible space
_INNER_MARK_RE = re.compile("[^\u2581]\u2581")   # a "▁" right after another character
_WORD_RE = re.compile("\u2581*[^\u2581]+|\u2581+")  # "▁"s then the rest, up to the next "▁"


class SPMTokenizer(Tokenizer):
    def __init__(self, md):
        super().__init__(md)
        scores = md.get("tokenizer.ggml.scores")
        if scores is None:
            raise FormatError("tokenizer.ggml.scores: missing (a 'llama' tokenizer needs piece scores)")
        if len(scores) != self.n_vocab:
            raise FormatError(f"tokenizer.ggml.scores: {len(scores)} entries for {self.n_vocab} tokens")
        self.scores = [float(s) for s in scores]
        self.add_space_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
        self._pieces = None   # piece text -> (id, score) for mergeable pieces
        self._byte_ids = None  # byte value -> id of its <0xNN> token
        self._user_re = None   # user-defined piece matcher, False when there are none
        self._word_split = False  # whether merging may go word by word (see _bpe)
        self._cache = {}       # escaped word -> ids, when _word_split

    def _default_add_bos(self, md):
        return True

    def _tables(self):
        """Build the piece and byte lookups on first use (keeps loading fast)."""
        if self._pieces is None:
            types, toks, scores = self.token_types.tolist(), self.tokens, self.scores
            pieces = {}
            byte_ids = {}
            for i, (s, t) in enumerate(zip(toks, types)):
                if t == TT_NORMAL:
                    # Control, unknown and unused pieces never come out of merging
                    # (sentencepiece treats them as reserved); first id wins.
                    if s not in pieces:
                        pieces[s] = (i, scores[i])
                elif t == TT_BYTE and len(s) == 6 and s.startswith("<0x") and s.endswith(">"):
                    byte_ids[int(s[3:5], 16)] = i
            self._word_split = not any(
                SPACE_MARK in p[1:] and _INNER_MARK_RE.search(p) for p in pieces)
            self._pieces = pieces
            self._byte_ids = byte_ids
        return self._pieces, self._byte_ids

    def _split_mask(self, parse_special):
        # User-defined pieces are matched later, in the escaped text, as
        # sentencepiece does; only control texts are split out of raw text.
        mask = super()._split_mask(parse_special)
        return mask & (self.token_types != TT_USER_DEFINED)

    def _user_defined(self):
        """(regex, text -> id) over user-defined pieces, or False when the
        vocabulary has none (built once)."""
        if self._user_re is None:
            ids = np.nonzero(self.token_types == TT_USER_DEFINED)[0].tolist()
            table = {}
            for i in ids:
                if self.tokens[i]:
                    table.setdefault(self.tokens[i], i)
            if table:
                alts = sorted(table, key=len, reverse=True)
                self._user_re = (re.compile("|".join(re.escape(a) for a in alts)), table)
            else:
                self._user_re = False
        return self._user_re

    def _normal_bytes(self, i):
        return self.tokens[i].replace(SPACE_MARK, " ").encode("utf-8")

    def token_bytes(self, token_id):
        # sentencepiece shows "▁" in user-defined pieces as a space, too.
        if 0 <= int(token_id) < self.n_vocab and self.token_types[int(token_id)] == TT_USER_DEFINED:
            return self._normal_bytes(int(token_id))
        return super().token_bytes(token_id)

    def _strips_first_space(self, token_id):
        # The dummy prefix the encoder added comes back off the first token.
        return self.add_space_prefix and self.token_types[int(token_id)] in (TT_NORMAL, TT_USER_DEFINED)

    def _encode_text(self, text, out, after_special):
        if self.add_space_prefix and after_special:
            text = " " + text
        text = text.replace(" ", SPACE_MARK)
        user = self._user_defined()
        if not user:
            self._bpe(text, out)
            return
        # User-defined pieces are atomic: merge only the text between them.
        rx, table = user
        pos = 0
        for m in rx.finditer(text):
            if m.start() > pos:
                self._bpe(text[pos:m.start()], out)
            out.append(table[m.group()])
            pos = m.end()
        if pos < len(text):
            self._bpe(text[pos:], out)

    def _bpe(self, text, out):
        """Append the ids of escaped text (no user-defined pieces in it).

        When no normal piece has a "▁" right after another character (true
        of LLaMA's vocabularies: "▁" only starts pieces or fills all-"▁"
        ones), no merge can cross a point where "▁" follows something else,
        so the text is cut there into words that merge alone and are cached."""
        self._tables()
        if not self._word_split:
            self._merge(text, out)
            return
        cache = self._cache
        for w in _WORD_RE.findall(text):
            ids = cache.get(w)
            if ids is None:
                ids = []
                self._merge(w, ids)
                if len(cache) < 100_000:
                    cache[w] = ids
            out.extend(ids)

    def _merge(self, text, out):
        """The merge loop proper, over the whole of `text`."""
        pieces, byte_ids = self._pieces, self._byte_ids
        n = len(text)
        if n == 0:
            return
        # Symbols as a doubly linked list over character positions; sym[i] is
        # the text of the symbol starting at i ("" once merged into its left).
        sym = list(text)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        heap = []
        get = pieces.get
        for i in range(n - 1):
            p = get(text[i:i + 2])
            if p is not None:
                # (-score, left position): best score first, then leftmost.
                heap.append((-p[1], i, i + 1, 2))
        heapq.heapify(heap)
        push, pop = heapq.heappush, heapq.heappop
        while heap:
            _, left, right, size = pop(heap)
            a = sym[left]
            b = sym[right] if right < n else ""
            # Stale entry: one side has since been merged into something else.
            if not a or not b or nxt[left] != right or len(a) + len(b) != size:
                continue
            merged = a + b
            sym[left] = merged
            sym[right] = ""
            r = nxt[right]
            nxt[left] = r
            if r < n:
                prv[r] = left
            # New candidate pairs with the left and right neighbours.
            l = prv[left]
            if l >= 0:
                s = sym[l] + merged
                p = get(s)
                if p is not None:
                    push(heap, (-p[1], l, left, len(s)))
            if r < n:
                s = merged + sym[r]
                p = get(s)
                if p is not None:
                    push(heap, (-p[1], left, r, len(s)))
        # Emit the symbols left to right.
        i = 0
        unk = self.unk_id
        while i < n:
            s = sym[i]
            p = get(s)
            if p is not None:
                out.append(p[0])
            else:
                # Only single characters can be missing (merges always make pieces).
                for byte in s.encode("utf-8"):
                    bid = byte_ids.get(byte)
                    if bid is not None:
                        out.append(bid)
                    elif unk is not None:
                        out.append(unk)
                        break
            i = nxt[i]
