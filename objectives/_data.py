"""Where a task's files come from: ``$SEARCH_DATA_DIR/<task>/``, else a download cache."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import urllib.request
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
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
    path = cache_path(kind, digest)
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError:
        pass
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError, IndexError):
        pass  # truncated or from an incompatible version: build it again
    value = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
            pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(f.name, path)
    except OSError:
        pass
    return value


def cache_path(kind: str, digest: str) -> Path:
    return cache_dir() / "prepared" / kind / f"{digest}.pkl"


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
