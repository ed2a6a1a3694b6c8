"""Where a task's files come from: ``$SEARCH_DATA_DIR/<task>/``, else a download cache."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from objectives.contract import SetupError

DATA_ENV = "SEARCH_DATA_DIR"


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "search"


def checkpoint_root() -> Path:
    """Where trials keep checkpoints: ``$SEARCH_CHECKPOINT_DIR`` (a folder every machine of a
    study sees, for preempted trials to resume elsewhere), else the local cache."""
    return Path(os.environ.get("SEARCH_CHECKPOINT_DIR") or cache_dir() / "checkpoints")


def task_files(task: str, files: dict[str, str]) -> Path:
    """Return the folder holding ``files`` (relative path -> canonical download URL).

    With SEARCH_DATA_DIR set, the files must be there (no download behind the user's back).
    Otherwise they are downloaded once into ~/.cache/search/<task>/.
    """
    if os.environ.get(DATA_ENV):
        root = Path(os.environ[DATA_ENV]) / task
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise SetupError(f"{task} data not found: {root / missing[0]} is missing (set {DATA_ENV} to the folder that holds {task}/)")
        return root
    root = cache_dir() / task
    for rel, url in files.items():
        target = root / rel
        if target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(target.suffix + ".part")
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as e:
            partial.unlink(missing_ok=True)
            raise SetupError(
                f"{task} data not found: not in {root} and the download of {url} failed ({getattr(e, 'reason', e)}); "
                f"set {DATA_ENV} to a folder that holds {task}/"
            ) from None
        partial.rename(target)
    return root


# --- on-disk cache of prepared (tokenized) data -----------------------------------------------

T = TypeVar("T")


def cached(kind: str, key: Mapping[str, Any], build: Callable[[], T]) -> T:
    """``build()``'s result, computed once per machine and kept in ``cache_dir()/prepared/<kind>/``.

    ``key`` holds everything that changes the result (data digests, tokenizer digest,
    max_length, the cleaning version...): any change is another file. The file is written to a
    temporary name and renamed into place, so a worker starting beside another never reads a half-written
    file; two workers that miss at once both build, and the second rename wins with equal
    content. An unreadable file is rebuilt; an unwritable cache only costs the rebuild next time.

    The file is an ``.npz`` read with ``allow_pickle=False`` (see ``dump_safe``): the cache may be
    shared (a compose volume), and a file planted there is data at worst, never code that runs.
    """
    path = cache_path(kind, cache_digest(key))
    try:
        return load_safe(path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # truncated, planted, or from an older format: build it again
    value = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
            try:
                dump_safe(value, f)
            except BaseException:
                os.unlink(f.name)
                raise
        os.replace(f.name, path)
    except OSError:
        pass
    return value


def cache_digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cache_path(kind: str, digest: str) -> Path:
    return cache_dir() / "prepared" / kind / f"{digest}.npz"


_STRUCTURE = "structure.json"  # the member holding the value's shape, its arrays named in it
_POOL = "ints"  # the member holding every list of ints, each one a slice of it
_MARKERS = {"__array__", "__ints__", "__rows__"}  # how the structure names an array member or a slice of the pool


def dump_safe(value: Any, file: Any) -> None:
    """Write ``value`` (dicts with str keys, lists, tuples as lists, str, numbers, bools, None and
    numeric numpy arrays) as an uncompressed .npz: each array a member (lists of ints and lists
    of such lists too), the rest as JSON. Anything else is a TypeError: what is cached must read
    back without pickle."""
    import numpy as np

    arrays: dict[str, np.ndarray] = {}

    pool: list[int] = []

    def add(array: np.ndarray) -> str:
        name = f"a{len(arrays)}"
        arrays[name] = array
        return name

    def pool_slice(ints: list[int]) -> list[int]:
        pool.extend(ints)
        return [len(pool) - len(ints), len(pool)]

    def encode(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            if v.dtype.hasobject:
                raise TypeError("an object array cannot be cached without pickle")
            return {"__array__": add(v)}
        if isinstance(v, Mapping):
            if not all(isinstance(k, str) for k in v) or _MARKERS & set(v):
                raise TypeError(f"cached dicts need str keys, none of {sorted(_MARKERS)}")
            return {k: encode(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            # Token ids, the bulk of a cached value, as arrays: JSON would be several times slower to read.
            # All of them in one member (a member is slow to open): each list a slice of it.
            if v and all(type(x) is int for x in v):
                return {"__ints__": pool_slice(v)}
            if v and all(isinstance(x, list) and x and all(type(t) is int for t in x) for x in v):
                return {"__rows__": pool_slice([t for x in v for t in x]), "lengths": pool_slice([len(x) for x in v])}
            return [encode(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        raise TypeError(f"{type(v).__name__} cannot be cached without pickle")

    structure = json.dumps(encode(value), separators=(",", ":")).encode()
    np.savez(file, **{_STRUCTURE: np.frombuffer(structure, dtype=np.uint8), _POOL: np.asarray(pool, dtype=np.int64)},
             **arrays)


def load_safe(path: Path) -> Any:
    """Read what ``dump_safe`` wrote; never unpickles (a pickle or an object array is a ValueError)."""
    import numpy as np

    archive = np.load(path, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a bare .npy: data, but not an entry
        raise ValueError(f"{path}: not an .npz archive")  # noqa: TRY004 - bad file content, rebuilt like the others
    with archive:
        structure = json.loads(archive[_STRUCTURE].tobytes())
        pool = archive[_POOL].tolist()

        def decode(v: Any) -> Any:
            if isinstance(v, dict):
                if "__array__" in v:
                    return archive[v["__array__"]]
                if "__ints__" in v:
                    return pool[v["__ints__"][0]:v["__ints__"][1]]
                if "__rows__" in v:
                    start, rows = v["__rows__"][0], []
                    for length in pool[v["lengths"][0]:v["lengths"][1]]:
                        rows.append(pool[start:start + length])
                        start += length
                    return rows
                return {k: decode(x) for k, x in v.items()}
            if isinstance(v, list):
                return [decode(x) for x in v]
            return v

        return decode(structure)


def file_digest(path: Path) -> str:
    """sha256 of a file's contents (re-read only when its size or mtime changes)."""
    stat = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """What makes a tokenizer's output what it is: its full serialisation (vocabulary,
    normaliser, special tokens) and the library version, not its name: two checkpoints that share a
    tokenizer share a cache, a local folder whose tokenizer changed does not."""
    import tokenizers
    import transformers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    h = hashlib.sha256(body.encode())
    h.update(f"{type(tokenizer).__name__} {tokenizers.__version__} {transformers.__version__}".encode())
    return h.hexdigest()
