"""The on-disk cache of tokenized data: built once per machine, reused by every later worker,
keyed by everything that changes the tokens, and never read half-written."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO

from objectives import _data


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def counting(value):
    """A build function that records how often it really ran."""
    calls = []

    def build():
        calls.append(1)
        return value

    return build, calls


def test_a_result_is_built_once_then_read_from_disk(cache_home):
    build, calls = counting({"ids": list(range(10))})
    assert _data.cached("demo", {"max_length": 64}, build) == {"ids": list(range(10))}
    files = list((cache_home / "search" / "prepared" / "demo").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    again, again_calls = counting("never returned")
    assert _data.cached("demo", {"max_length": 64}, again) == {"ids": list(range(10))}
    assert (len(calls), len(again_calls)) == (1, 0), "the second call reads the file"


def test_any_change_of_the_key_is_another_entry(cache_home):
    for key, value in (({"max_length": 64, "tokenizer": "a"}, 1), ({"max_length": 128, "tokenizer": "a"}, 2),
                       ({"max_length": 64, "tokenizer": "b"}, 3)):
        assert _data.cached("demo", key, lambda v=value: v) == value
    assert len(list((cache_home / "search" / "prepared" / "demo").iterdir())) == 3
    assert _data.cached("demo", {"tokenizer": "a", "max_length": 64}, lambda: 99) == 1, "key order does not matter"


def test_a_damaged_file_is_rebuilt(cache_home):
    _data.cached("demo", {"k": 1}, lambda: "first")
    (path,) = (cache_home / "search" / "prepared" / "demo").iterdir()
    path.write_bytes(path.read_bytes()[:5])
    build, calls = counting("rebuilt")
    assert _data.cached("demo", {"k": 1}, build) == "rebuilt" and calls == [1]
    assert _data.load_safe(path) == "rebuilt"


class PlantedPickle:
    """What an attacker with write access to a shared cache could plant: unpickling it runs code
    (here: creates ``marker``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_planted_pickle_is_never_run_and_the_entry_is_rebuilt(cache_home, tmp_path):
    marker = tmp_path / "pickle-ran"
    key = {"texts": "digest", "max_length": 64}
    path = _data.cache_path("demo", _data.cache_digest(key))
    path.parent.mkdir(parents=True)
    payload = pickle.dumps(PlantedPickle(marker))
    path.write_bytes(payload)
    path.with_suffix(".pkl").write_bytes(payload)  # where the cache used to keep its entries
    pickle.loads(payload)
    assert marker.exists(), "the planted file does run code when unpickled"
    marker.unlink()

    build, calls = counting({"ids": np.arange(5, dtype=np.int32), "offsets": np.array([0, 2, 5])})
    value = _data.cached("demo", key, build)
    assert calls == [1] and not marker.exists(), "rebuilt, and the pickle never ran"
    assert value["ids"].tolist() == [0, 1, 2, 3, 4]
    reread = _data.cached("demo", key, lambda: "never returned")
    assert reread["offsets"].tolist() == [0, 2, 5] and not marker.exists()


def test_any_other_file_at_the_entry_is_rebuilt(cache_home):
    key = {"k": 1}
    path = _data.cache_path("demo", _data.cache_digest(key))
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        np.save(f, np.arange(3))  # a bare .npy
    assert _data.cached("demo", key, lambda: [1, 2]) == [1, 2]
    with open(path, "wb") as f:
        np.savez(f, other=np.arange(3))  # an .npz that is not an entry
    assert _data.cached("demo", key, lambda: [3]) == [3]
    with open(path, "wb") as f:
        np.savez(f, **{"structure.json": np.frombuffer(b'{"__array__": "missing"}', dtype=np.uint8),
                       "ints": np.arange(0)})
    assert _data.cached("demo", key, lambda: [4]) == [4]


def test_the_cached_structures_read_back_as_written(cache_home):
    """What the tasks cache: Recipe-MPR's items (lists of dicts of token-id lists) and the
    classification tasks' flat token ids (a dict of arrays)."""
    items = [{"features": {"input_ids": [[101, 7, 102], [101, 102]], "attention_mask": [[1, 1, 1], [1, 1]]},
              "label": 1}] * 3
    assert _data.cached("items", {"k": 1}, lambda: items) == items
    assert _data.cached("items", {"k": 1}, lambda: None) == items, "read from disk"
    mixed = {"ids": [5, 6], "rows": [[], [1, 2]], "deep": [[[1], [2, 3]]], "label": 1, "name": "x", "share": 0.5,
             "none": None, "flag": True, "flags": [True, False], "empty": []}
    assert _data.cached("mixed", {"k": 1}, lambda: mixed) == mixed
    again = _data.cached("mixed", {"k": 1}, lambda: None)
    assert again == mixed and type(again["ids"][0]) is int and type(again["flags"][0]) is bool
    flat = {"ids": np.arange(7, dtype=np.int32), "offsets": np.array([0, 3, 7], dtype=np.int64)}
    read = _data.cached("flat", {"k": 1}, lambda: flat)
    again = _data.cached("flat", {"k": 1}, lambda: None)
    for value in (read, again):
        assert value["ids"].dtype == np.int32 and value["ids"].tolist() == list(range(7))
        assert value["offsets"].tolist() == [0, 3, 7]
    with pytest.raises(TypeError):
        _data.cached("objects", {"k": 1}, lambda: {"x": object()})
    assert list((cache_home / "search" / "prepared" / "objects").iterdir()) == [], "no temporary left behind"


def test_file_digest_follows_the_contents(tmp_path):
    data = tmp_path / "songs.csv"
    data.write_text("a,b\n")
    first = _data.file_digest(data)
    data.write_text("a,c\n")
    assert _data.file_digest(data) != first
    data.write_text("a,b\n")
    assert _data.file_digest(data) == first


def test_tokenizer_digest_is_the_tokenizer_not_its_name(tiny_model, tmp_path):
    import transformers

    from objectives._models import resolve_model

    minilm = transformers.AutoTokenizer.from_pretrained(resolve_model("minilm"))
    copy_of_it = transformers.AutoTokenizer.from_pretrained(str(tiny_model))  # the same vocabulary, saved elsewhere
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "love", "song"]))
    other = transformers.BertTokenizerFast(vocab_file=str(vocab))
    assert _data.tokenizer_digest(minilm) == _data.tokenizer_digest(copy_of_it)
    assert _data.tokenizer_digest(other) != _data.tokenizer_digest(minilm)


# --- across processes -------------------------------------------------------------------------


def run_python(code: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result


def test_a_second_worker_process_reads_recipe_mpr_tokens_from_disk(data_dir, tiny_model, tmp_path):
    """Two processes tokenize Recipe-MPR: the first writes the cache file, the second reads it
    (the file is not rewritten: same inode, same mtime) and gets the same token ids."""
    code = f"""
        import hashlib, pickle
        from objectives import recipe_mpr
        encoded = recipe_mpr.encoded_items({str(tiny_model)!r}, 64, 0)
        print(hashlib.sha256(pickle.dumps(encoded)).hexdigest())
    """
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "SEARCH_DATA_DIR": str(data_dir)}
    first = run_python(code, env).stdout
    (path,) = (tmp_path / "cache" / "search" / "prepared" / "recipe-mpr").iterdir()
    written = path.stat()
    second = run_python(code, env).stdout
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (written.st_ino, written.st_mtime_ns), "the second process re-tokenized"
    assert first == second
    assert list(path.parent.iterdir()) == [path], "one file, no temporary left behind"


def test_a_reader_never_sees_a_half_written_file(tmp_path):
    """One process keeps rewriting a 4 MB entry (removing it first) while another reads whatever
    is at the cache path: every read it makes is complete."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    writer = """
        import numpy as np
        from objectives import _data
        for round in range(25):
            for stale in (_data.cache_dir() / "prepared" / "big").glob("*.npz"):
                stale.unlink()
            _data.cached("big", {"k": 1}, lambda: np.arange(1_000_000, dtype=np.int32))
        (_data.cache_dir() / "prepared" / "writer-done").touch()
    """
    reader = """
        import time
        from objectives import _data
        folder = _data.cache_dir() / "prepared" / "big"
        complete = broken = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = (folder.parent / "writer-done").exists()  # before the pass: the last pass reads the final file
            for f in folder.glob("*.npz") if folder.exists() else ():
                try:
                    value = _data.load_safe(f)
                except FileNotFoundError:
                    continue
                except Exception:
                    broken += 1
                    continue
                complete += len(value) == 1_000_000 and int(value[-1]) == 999_999
            if done:
                break
        print(complete, broken)
    """
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    read = subprocess.Popen([sys.executable, "-c", textwrap.dedent(reader)], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        run_python(writer, env)
        out, err = read.communicate(timeout=120)
    finally:
        if read.poll() is None:
            read.kill()
    assert read.returncode == 0, err
    complete, broken = map(int, out.split())
    assert broken == 0 and complete > 0, (complete, broken)
