"""The on-disk cache of tokenized data: built once per machine, reused by every later worker,
keyed by everything that changes the tokens, and never read half-written."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

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
    assert len(files) == 1 and files[0].suffix == ".pkl"
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
    assert pickle.loads(path.read_bytes()) == "rebuilt"


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
        from objectives import _data
        for round in range(25):
            for stale in (_data.cache_dir() / "prepared" / "big").glob("*.pkl"):
                stale.unlink()
            _data.cached("big", {"k": 1}, lambda: bytes(4_000_000) + b"end")
        (_data.cache_dir() / "prepared" / "writer-done").touch()
    """
    reader = """
        import pickle, time
        from objectives import _data
        folder = _data.cache_dir() / "prepared" / "big"
        complete = broken = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for f in folder.glob("*.pkl") if folder.exists() else ():
                try:
                    value = pickle.loads(f.read_bytes())
                except FileNotFoundError:
                    continue
                except Exception:
                    broken += 1
                    continue
                complete += value.endswith(b"end") and len(value) == 4_000_003
            if (folder.parent / "writer-done").exists():
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
