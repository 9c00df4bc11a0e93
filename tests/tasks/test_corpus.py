"""The two encodings: words with <eos> per line, and bytes cut by position."""

from fractions import Fraction

import numpy as np

from moebench.tasks.corpus import ByteCorpus, WordCorpus

WORDS = WordCorpus({"train": "w/train.txt", "val": "w/valid.txt"})


def test_words_get_ids_by_first_appearance_in_train_and_eos_per_line():
    raw = {"w/train.txt": b" the cat\n\n the <unk> sat\n", "w/valid.txt": b" sat the\n"}
    tokens = WORDS.encode(raw)
    # the=0 cat=1 <eos>=2 <unk>=3 sat=4; the blank line still ends with <eos>.
    assert tokens.splits["train"].tolist() == [0, 1, 2, 2, 0, 3, 4, 2]
    assert tokens.splits["val"].tolist() == [4, 0, 2]
    assert tokens.vocab_size == 5


def test_word_texts_are_the_words_in_id_order():
    raw = {"w/train.txt": b" the cat\n\n the <unk> sat\n", "w/valid.txt": b" sat the\n"}
    assert WORDS.texts(raw) == ["the", "cat", "<eos>", "<unk>", "sat"]


def test_byte_texts_decode_the_ids_back_to_the_text():
    text, corpus = "hello, world\n", ByteCorpus("f", {"train": Fraction(1)})
    texts = corpus.texts({"f": text.encode()})
    assert "".join(texts[i] for i in corpus.encode({"f": text.encode()}).splits["train"]) == text


def test_bytes_map_to_distinct_bytes_in_byte_order():
    text = "hello, world\n"
    tokens = ByteCorpus("f", {"train": Fraction(1)}).encode({"f": text.encode()})
    chars = sorted(set(text))  # nanoGPT's vocabulary
    assert tokens.vocab_size == len(chars)
    assert tokens.splits["train"].tolist() == [chars.index(c) for c in text]


def test_byte_splits_are_consecutive_floors_of_the_shares():
    data = np.random.default_rng(0).integers(0, 256, 1234, dtype=np.uint8).tobytes()
    ends = {"train": Fraction(9, 10), "val": Fraction(19, 20), "test": Fraction(1)}
    splits = ByteCorpus("f", ends).encode({"f": data}).splits
    assert [len(s) for s in splits.values()] == [1110, 1172 - 1110, 1234 - 1172]
    assert np.array_equal(np.concatenate(list(splits.values())),
                          ByteCorpus("f", {"all": Fraction(1)}).encode({"f": data}).splits["all"])
