"""How a data set's files become one token-id array per split.

Two encodings cover every language-modelling task:

* :class:`WordCorpus` -- whitespace-separated tokens with one ``<eos>`` per
  line, one file per split, the vocabulary taken from train (WikiText-2, PTB,
  and PTB-char, whose "words" are single characters);
* :class:`ByteCorpus` -- one file cut into splits by position, each distinct
  byte a token (Tiny Shakespeare, enwik8).

Encoded arrays are cached under a key made of the source files' sha256 and
the encoding's parameters, so a changed file or encoding never reuses a stale
cache, and a second run skips the encoding. Each entry also holds its key and
a digest of its arrays, checked on every read: a damaged or altered entry is
replaced, never used.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from moebench.config import DataConfig
from moebench.tasks.data import cache_dir, checked_file, read_cache, write_cache

# Bump when an encoding or the cache format changes, so caches written by
# older code are not read. 2: entries carry their key and a digest.
ENCODING_VERSION = 2


@dataclass
class TokenArrays:
    splits: dict[str, np.ndarray]  # split -> token ids, in file order
    vocab_size: int


class Corpus(ABC):
    @property
    @abstractmethod
    def paths(self) -> tuple[str, ...]:
        """The files it reads, relative to the data root."""

    @abstractmethod
    def encode(self, raw: dict[str, bytes]) -> TokenArrays:
        """Token arrays from the contents of :attr:`paths`."""

    @abstractmethod
    def texts(self, raw: dict[str, bytes]) -> list[str]:
        """Each token id's text (at its index), from the contents of :attr:`paths`."""

    def vocabulary(self, data: DataConfig) -> list[str]:
        """Each token id's text, read from the checked files (reports decode ids with it)."""
        return self.texts({rel: checked_file(data, rel)[0].read_bytes() for rel in self.paths})

    def load(self, data: DataConfig) -> TokenArrays:
        """Check the files, then read the arrays from the cache or encode and cache them."""
        files = {rel: checked_file(data, rel) for rel in self.paths}
        key_text = f"{ENCODING_VERSION} {self!r} " + " ".join(sha for _, sha in files.values())
        key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
        cached = cache_dir(data) / f"{Path(self.paths[0]).parent.name}-{key}.npz"
        arrays = read_cache(cached, key)
        if arrays is not None:
            return TokenArrays({s: arrays[s] for s in arrays if s != "vocab_size"},
                               int(arrays["vocab_size"]))
        tokens = self.encode({rel: path.read_bytes() for rel, (path, _) in files.items()})
        write_cache(cached, key, {**tokens.splits, "vocab_size": np.array(tokens.vocab_size)})
        return tokens


@dataclass
class WordCorpus(Corpus):
    """As pytorch/examples' word_language_model (data.py): each line's
    whitespace-separated tokens plus ``<eos>``; ids in order of first
    appearance in train. Valid and test hold no type that train lacks (rare
    words are already ``<unk>``), and the checksums make sure of these files."""

    files: dict[str, str]  # split -> path under the data root; "train" first

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self.files.values())

    def encode(self, raw: dict[str, bytes]) -> TokenArrays:
        index: dict[str, int] = {}
        splits = {}
        for split, rel in self.files.items():
            words = _words(raw[rel])
            if split == "train":
                ids = [index.setdefault(w, len(index)) for w in words]
            else:
                ids = [index[w] for w in words]
            splits[split] = np.array(ids, dtype=np.int32)
        return TokenArrays(splits, len(index))

    def texts(self, raw: dict[str, bytes]) -> list[str]:
        return list(dict.fromkeys(_words(raw[self.files["train"]])))  # in order of first appearance


def _words(text: bytes) -> list[str]:
    # One <eos> per newline, i.e. per line of text. (The PTB char files
    # end in "\n ": iterating lines, as pytorch/examples does, would
    # add one more <eos> for that lone space.)
    return text.decode("utf-8").replace("\n", " <eos> ").split()


@dataclass
class ByteCorpus(Corpus):
    """One file cut by position: split i runs up to ``floor(n * ends[i])``
    bytes of n. The vocabulary is the distinct bytes of the whole file in byte
    order; for ASCII text that is nanoGPT's ``sorted(set(text))``."""

    file: str
    ends: dict[str, Fraction]  # split -> cumulative end, as a share of the file

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.file,)

    def encode(self, raw: dict[str, bytes]) -> TokenArrays:
        bytes_N = np.frombuffer(raw[self.file], dtype=np.uint8)
        present_256 = np.bincount(bytes_N, minlength=256) > 0
        id_of_byte_256 = (np.cumsum(present_256) - 1).astype(np.uint8)
        ids_N = id_of_byte_256[bytes_N]
        n, start, splits = len(ids_N), 0, {}
        for split, end in self.ends.items():
            stop = int(n * end)  # exact floor: Fraction, not float
            splits[split], start = ids_N[start:stop], stop
        return TokenArrays(splits, int(present_256.sum()))

    def texts(self, raw: dict[str, bytes]) -> list[str]:
        """Each byte as the latin-1 character of its value: ASCII as itself, a
        byte of a multi-byte UTF-8 character (enwik8) as one symbol per value."""
        present_256 = np.bincount(np.frombuffer(raw[self.file], dtype=np.uint8), minlength=256) > 0
        return [bytes([b]).decode("latin-1") for b in np.flatnonzero(present_256)]
