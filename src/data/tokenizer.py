"""BERT WordPiece tokenisation with MindSpore's text.BertTokenizer.

Sentences become [CLS] pieces... [SEP], cut to max_tokens (keeping [SEP] last) and padded with
[PAD] (id 0); the attention mask is 1 for tokens and 0 for padding.

The text is cleaned, accent-stripped and lower-cased here, in Python, the way Hugging Face's
BertNormalizer does it; MindSpore's own lower_case option applies NFKC case folding, which
differs on characters such as '…', 'ß' or ligatures. Splitting and WordPiece are MindSpore's.
"""
import os
import unicodedata

import numpy as np
import mindspore.dataset.text as text

CLS, SEP, PAD, UNK = "[CLS]", "[SEP]", "[PAD]", "[UNK]"


class VocabError(ValueError):
    """A vocab.txt that is missing or unusable."""


def load_vocab(vocab_file):
    """token -> id, one token per line, id = line index (as BERT's vocab.txt)."""
    if not vocab_file or not os.path.isfile(vocab_file):
        raise VocabError(f"vocab file not found: '{vocab_file}' (set --vocab_file to a BERT vocab.txt)")
    vocab = {}
    with open(vocab_file, "r", encoding="utf-8") as handle:
        try:
            for index, line in enumerate(handle):
                token = line.rstrip("\n").rstrip("\r")
                if token and token not in vocab:
                    vocab[token] = index
        except UnicodeDecodeError as err:
            raise VocabError(f"vocab file {vocab_file} is not UTF-8 text (byte 0x{err.object[err.start]:02x} "
                             "cannot be decoded): is it a vocab.txt?") from None
    for special in (PAD, UNK, CLS, SEP):
        if special not in vocab:
            raise VocabError(f"vocab file {vocab_file} has no {special} token")
    if vocab[PAD] != 0:
        raise VocabError(f"vocab file {vocab_file}: {PAD} must be the first line (id 0), found id {vocab[PAD]}")
    return vocab


def _is_control(char):
    if char in "\t\n\r":
        return False
    return unicodedata.category(char).startswith("C")


def _is_whitespace(char):
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def normalize_text(sentence):
    """Clean, strip accents and lower-case, as BERT uncased does."""
    kept = []
    for char in sentence:
        if ord(char) in (0, 0xFFFD) or _is_control(char):
            continue
        kept.append(" " if _is_whitespace(char) else char)
    decomposed = unicodedata.normalize("NFD", "".join(kept))
    stripped = "".join(char for char in decomposed if unicodedata.category(char) != "Mn")
    # Per character, without Python's final-sigma context rule (matches the Rust normaliser).
    return "".join(char.lower() for char in stripped)


class SentenceTokenizer:
    """MindSpore BertTokenizer plus the vocab's token ids; build once, use for every sentence."""

    def __init__(self, vocab_file):
        self.vocab_file = vocab_file
        self.vocab = load_vocab(vocab_file)
        self._bert = text.BertTokenizer(text.Vocab.from_dict(self.vocab), lower_case=False,
                                        preserve_unused_token=False, with_offsets=False)
        self.cls_id = self.vocab[CLS]
        self.sep_id = self.vocab[SEP]
        self.pad_id = self.vocab[PAD]

    def __len__(self):
        return len(self.vocab)

    def tokenize(self, sentence):
        """WordPiece tokens of a sentence, without [CLS]/[SEP]."""
        cleaned = normalize_text(sentence)
        if not cleaned.strip():
            return []
        pieces = self._bert(cleaned)
        return [str(piece) for piece in np.atleast_1d(pieces) if str(piece)]

    def token_ids(self, sentence):
        unk_id = self.vocab[UNK]
        return [self.vocab.get(piece, unk_id) for piece in self.tokenize(sentence)]

    def length(self, sentence):
        """Untruncated length with [CLS] and [SEP]."""
        return len(self.tokenize(sentence)) + 2

    def encode_with_length(self, sentence, max_tokens):
        """(input_ids, attention_mask, untruncated length with [CLS] and [SEP])."""
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2 (for [CLS] and [SEP]), got {max_tokens}")
        pieces = self.token_ids(sentence)
        ids = [self.cls_id] + pieces[:max_tokens - 2] + [self.sep_id]
        input_ids = np.full(max_tokens, self.pad_id, np.int32)
        attention_mask = np.zeros(max_tokens, np.int32)
        input_ids[:len(ids)] = ids
        attention_mask[:len(ids)] = 1
        return input_ids, attention_mask, len(pieces) + 2

    def encode(self, sentence, max_tokens):
        """(input_ids int32[max_tokens], attention_mask int32[max_tokens])."""
        input_ids, attention_mask, _ = self.encode_with_length(sentence, max_tokens)
        return input_ids, attention_mask


_CACHE = {}


def build_tokenizer(vocab_file):
    """SentenceTokenizer for a vocab.txt, built once per path."""
    key = os.path.abspath(vocab_file) if vocab_file else vocab_file
    if key not in _CACHE:
        _CACHE[key] = SentenceTokenizer(vocab_file)
    return _CACHE[key]


def _as_tokenizer(tokenizer_or_vocab):
    if isinstance(tokenizer_or_vocab, SentenceTokenizer):
        return tokenizer_or_vocab
    return build_tokenizer(tokenizer_or_vocab)


def encode_sentence(tokenizer_or_vocab, sentence, max_tokens):
    """(input_ids int32[T], attention_mask int32[T]); accepts a SentenceTokenizer or a vocab path."""
    return _as_tokenizer(tokenizer_or_vocab).encode(sentence, max_tokens)


def sentence_length(tokenizer_or_vocab, sentence):
    """Untruncated token count with [CLS] and [SEP] (predict.py errors when it exceeds max_tokens)."""
    return _as_tokenizer(tokenizer_or_vocab).length(sentence)
