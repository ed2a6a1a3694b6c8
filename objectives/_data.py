"""Where a task's files come from: ``$SEARCH_DATA_DIR/<task>/``, else a download cache."""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

from objectives._reporting import SetupError

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
