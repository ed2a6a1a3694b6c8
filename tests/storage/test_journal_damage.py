"""The embedded store's journal file: a write cut short (a full disk, a killed process) never
damages it, a damaged one is one line naming the file and the line, and `search store repair`
keeps every intact record.

Every journal here is a real one, written by a real `search worker` run on the real Recipe-MPR
data; the damage is done to a copy of it, the way a disk or a process does it.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.storages.journal import JournalFileBackend

from helpers import REPO, command, known, ok, spec_dict
from storage import JournalDamaged, StorageError, check_journal, open_storage, repair_journal

pytestmark = pytest.mark.usefixtures("data_dir")

NAME = "damage"


@pytest.fixture(scope="module")
def real_journal(tmp_path_factory, tiny_model, cli_env) -> Path:
    """A journal holding one study of two finished trials and a third known configuration
    waiting (one epoch each), as `search worker` wrote it."""
    folder = tmp_path_factory.mktemp("real-journal")
    spec = spec_dict(NAME, tiny_model, known=[known("a", 3e-3, 1), known("b", 1e-3, 1), known("c", 2e-3, 1)])
    (folder / f"{NAME}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    ok(subprocess.run(command("worker", "--study", f"{NAME}.yaml", "--storage", "studies.journal", "--n-trials", "2"),
                      cwd=folder, env=cli_env, capture_output=True, text=True, timeout=600))
    return folder / "studies.journal"


@pytest.fixture
def journal(real_journal: Path, tmp_path: Path) -> Path:
    """A copy of the real journal (and its spec) in this test's folder, where ``cli`` runs."""
    shutil.copy(real_journal.parent / f"{NAME}.yaml", tmp_path)
    return Path(shutil.copy(real_journal, tmp_path / "studies.journal"))


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def line_of(path: Path, op: int, nth: int = 0) -> int:
    """The number (from 1) of the ``nth`` line holding a record of operation ``op``."""
    numbers = [n for n, line in enumerate(lines_of(path), start=1) if json.loads(line)["op_code"] == op]
    return numbers[nth]


def seen_by_optuna(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Everything plain Optuna reads from a journal: per study, each trial as a user sees it."""
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return {
        s.study_name: [(t.number, t.state.name, t.params, t.values, t.intermediate_values, t.user_attrs)
                       for t in storage.get_all_trials(s._study_id)]
        for s in storage.get_all_studies()
    }


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The command failed as a user's mistake does: exit 2 and one line on stderr, no traceback."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- a write cut short -------------------------------------------------------------------------

# A process whose file size limit stops its next journal write half-way: the kernel writes what
# fits, and the next write of the same record fails. With SIGXFSZ at its default the process is
# killed there (a worker dying in mid-write); Python ignores SIGXFSZ, and the write raises EFBIG
# (a write failing on a full disk, its process alive).
CUT_SHORT = """
import os, resource, signal, sys
import optuna
from storage import open_storage
if sys.argv[3] == "killed":
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
storage = open_storage(sys.argv[1])
study = optuna.load_study(study_name=sys.argv[2], storage=storage)
limit = os.path.getsize(sys.argv[1]) + 40
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    study.set_user_attr("cut-short", "x" * 200)
except OSError as e:
    print(e.errno)
"""


def test_a_worker_killed_in_mid_write_leaves_a_line_cut_short_that_the_next_worker_removes(journal, cli):
    size = journal.stat().st_size
    killed = subprocess.run([sys.executable, "-c", CUT_SHORT, str(journal), NAME, "killed"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGXFSZ, killed.stdout + killed.stderr
    assert journal.stat().st_size == size + 40 and not journal.read_bytes().endswith(b"\n"), "a line cut short"

    worker = ok(cli("worker", "--study", f"{NAME}.yaml", "--storage", str(journal), "--n-trials", "1"))
    assert "removed an unfinished last line (40 bytes" in worker.stderr

    status = json.loads(ok(cli("status", "--study", NAME, "--storage", str(journal), "--format", "json")).stdout)
    assert status["trials"]["complete"] + status["trials"]["pruned"] == 3, "the two trials before and the new one"
    assert "intact" in ok(cli("store", "check", "--storage", str(journal))).stdout
    assert "cut-short" not in optuna.load_study(study_name=NAME, storage=open_storage(str(journal))).user_attrs


def test_a_write_that_fails_half_way_leaves_nothing_of_itself(journal):
    before = journal.read_bytes()
    failed = subprocess.run([sys.executable, "-c", CUT_SHORT, str(journal), NAME, "fails"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert (failed.returncode, failed.stdout.strip()) == (0, str(errno.EFBIG)), failed.stderr
    assert journal.read_bytes() == before, "the 40 bytes that made it to the file were cut away"


# A full disk, for real: the journal on a tmpfs 64 KiB larger than it (in a mount namespace of its
# own), filled up by another file; records are appended until one does not fit, then space is freed.
FULL_DISK = """
import json, os, shutil, sys
import optuna
from storage import check_journal, open_storage
folder, original = sys.argv[1], sys.argv[2]
path = shutil.copy(original, os.path.join(folder, "studies.journal"))
study = optuna.load_study(study_name=sys.argv[3], storage=open_storage(path))
with open(os.path.join(folder, "filler"), "wb", buffering=0) as filler:
    try:
        while True:
            filler.write(bytes(1024))
    except OSError:
        pass
written, error = 0, None
try:
    while True:
        study.set_user_attr(f"k{written}", "v" * 100)
        written += 1
except OSError as e:
    error = e.errno
full = open(path, "rb").read()
os.unlink(os.path.join(folder, "filler"))
study.set_user_attr("after", "space freed")
attrs = optuna.load_study(study_name=sys.argv[3], storage=open_storage(path)).user_attrs
check = check_journal(path)
print(json.dumps({"error": error, "written": written, "ends_in_newline": full.endswith(b"\\n"),
                  "attrs": sorted(a for a in attrs if not a.startswith("search:")),
                  "damage": len(check.damage), "unfinished": check.unfinished_bytes}))
"""


def test_a_full_disk_leaves_no_part_of_a_record_and_writing_goes_on_once_space_is_freed(journal, tmp_path, cli_env):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare: cannot mount a small tmpfs to fill up")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    size = (journal.stat().st_size // 4096 + 16) * 4096
    script = (f"mount -t tmpfs -o size={size} none {mount} && "
              + shlex.join([sys.executable, "-c", FULL_DISK, str(mount), str(journal), NAME]))
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=cli_env, capture_output=True,
                            text=True, timeout=300)
    if result.returncode != 0 and "mount" in result.stderr and "Traceback" not in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["error"] == errno.ENOSPC and found["written"] > 0
    assert found["ends_in_newline"], "the record that did not fit left no part of itself"
    assert found["attrs"] == sorted([f"k{i}" for i in range(found["written"])] + ["after"])
    assert (found["damage"], found["unfinished"]) == (0, 0)


# --- damage: one line, naming the file and the line -----------------------------------------------


def break_json(path: Path, number: int) -> None:
    lines = lines_of(path)
    lines[number - 1] = lines[number - 1][:-1]  # its closing brace gone
    path.write_bytes(b"\n".join(lines) + b"\n")


def random_bytes(path: Path, number: int) -> None:
    """Random bytes written over the file from the middle of line ``number`` on (a bad sector)."""
    data = bytearray(path.read_bytes())
    at = sum(len(line) + 1 for line in lines_of(path)[:number - 1]) + 20
    data[at:at + 300] = random.Random(7).randbytes(300)
    path.write_bytes(bytes(data))


def not_utf8(path: Path, number: int) -> None:
    lines = lines_of(path)
    lines[number - 1] = lines[number - 1].replace(b'"', b'"\xff', 1)
    path.write_bytes(b"\n".join(lines) + b"\n")


def appended_onto_a_cut_line(path: Path, number: int) -> None:
    """What Optuna's own backend does after a full disk: the file is cut in line ``number`` (the
    write that did not fit), and the next writers append onto that line."""
    lines = lines_of(path)
    kept = b"\n".join(lines[:number - 1]) + b"\n" + lines[number - 1][:37]
    path.write_bytes(kept)
    plain = JournalFileBackend(str(path))
    plain.append_logs([{"op_code": 2, "worker_id": "plain-optuna", "study_id": 0, "user_attr": {"after": "full"}}])
    plain.append_logs([{"op_code": 2, "worker_id": "plain-optuna", "study_id": 0, "user_attr": {"later": 1}}])


DAMAGE = {"corrupt middle line": break_json, "random bytes": random_bytes, "not UTF-8": not_utf8,
          "appended onto a cut line": appended_onto_a_cut_line}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_journal_is_one_line_that_names_the_file_and_the_line(damage, journal, cli):
    number = len(lines_of(journal)) // 2
    DAMAGE[damage](journal, number)
    line = one_line_error(cli("status", "--study", NAME, "--storage", str(journal)))
    assert line.startswith(f"error: journal {journal} line {number}: damaged ("), line
    assert f"search store check --storage {journal}" in line and f"search store repair --storage {journal}" in line


@pytest.mark.parametrize("args", [("studies",), ("export", "--study", NAME, "-o", "best.yaml"),
                                  ("worker", "--study", f"{NAME}.yaml", "--n-trials", "1")],
                         ids=["studies", "export", "worker"])
def test_every_command_says_so_in_the_same_line(args, journal, cli):
    number = line_of(journal, 5)  # a SET_TRIAL_PARAM line
    break_json(journal, number)
    before = journal.read_bytes()
    line = one_line_error(cli(*args, "--storage", str(journal)))
    assert line.startswith(f"error: journal {journal} line {number}: damaged (not JSON at column"), line
    assert journal.read_bytes() == before, "nothing written to a damaged journal"


def test_a_plain_optuna_reader_of_such_a_journal_fails_where_ours_names_the_line(journal):
    """The problem as users met it: Optuna's own reader, after an append onto a cut line."""
    number = len(lines_of(journal)) - 1
    appended_onto_a_cut_line(journal, number)
    with pytest.raises(json.JSONDecodeError):
        optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    with pytest.raises(JournalDamaged) as damaged:
        open_storage(str(journal))
    assert damaged.value.line == number and "\n" not in str(damaged.value)


# --- check and repair -------------------------------------------------------------------------------


def without_line(path: Path, number: int, folder: Path) -> dict[str, Any]:
    """What Optuna reads from the journal with one whole line left out: what a repair must give."""
    lines = lines_of(path)
    del lines[number - 1]
    (folder / "expected.journal").write_bytes(b"\n".join(lines) + b"\n")
    return seen_by_optuna(folder / "expected.journal")


def check_then_repair(cli, journal: Path, number: int) -> Path:
    """`search store check` reports the line (exit 1); `search store repair` rewrites the file and
    names the backup, which holds the damaged file byte for byte."""
    damaged = journal.read_bytes()
    check = cli("store", "check", "--storage", str(journal))
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"  line {number}: " in check.stdout and "search store repair" in check.stdout
    repaired = ok(cli("store", "repair", "--storage", str(journal)))
    backup = Path(repaired.stdout.strip().rsplit("the old file is ", 1)[1])
    assert backup.parent == journal.parent and backup.name.startswith("studies.journal.bak-")
    assert backup.read_bytes() == damaged
    assert "intact" in ok(cli("store", "check", "--storage", str(journal))).stdout
    return backup


def test_repair_keeps_every_record_but_the_damaged_one(journal, cli, tmp_path):
    number = line_of(journal, 7, nth=1)  # the second trial's first epoch (SET_TRIAL_INTERMEDIATE_VALUE)
    expected = without_line(journal, number, tmp_path)
    break_json(journal, number)
    check_then_repair(cli, journal, number)
    assert seen_by_optuna(journal) == expected
    ok(cli("status", "--study", NAME, "--storage", str(journal)))


def test_repair_keeps_the_whole_records_appended_onto_a_cut_line(journal, cli):
    lines = lines_of(journal)
    number = len(lines) - 1
    appended_onto_a_cut_line(journal, number)
    check_then_repair(cli, journal, number)
    study = optuna.load_study(study_name=NAME, storage=open_storage(str(journal)))
    assert {"after": "full", "later": 1}.items() <= study.user_attrs.items()
    kept = lines_of(journal)
    assert kept[:number - 1] == lines[:number - 1], "every line before the cut, byte for byte"
    assert [json.loads(line)["user_attr"] for line in kept[number - 1:]] == [{"after": "full"}, {"later": 1}], \
        "the two whole records; the write cut short is gone (it never was a record)"


def test_repair_keeps_every_trial_when_the_line_that_created_one_is_damaged(journal, cli, tmp_path):
    """Trial ids are positions in the journal: without a placeholder for the lost creation, every
    later record would land on the next trial."""
    before = seen_by_optuna(journal)
    number = line_of(journal, 4, nth=0)  # CREATE_TRIAL of the first known configuration
    lines = lines_of(journal)
    at = lines[number - 1].index(b'"system_attrs"') + 20  # its fixed parameters damaged
    lines[number - 1] = lines[number - 1][:at] + b"\x00\x00" + lines[number - 1][at + 2:]
    journal.write_bytes(b"\n".join(lines) + b"\n")
    check_then_repair(cli, journal, number)
    assert seen_by_optuna(journal) == before
    trial = optuna.load_study(study_name=NAME, storage=open_storage(str(journal))).trials[0]
    assert f"journal line {number}" in trial.system_attrs["search:recovered"]


def overwrite(path: Path, number: int) -> None:
    """Line ``number`` overwritten whole: nothing in it says what it held."""
    lines = lines_of(path)
    lines[number - 1] = b"#" * len(lines[number - 1])
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_a_repair_that_could_give_records_to_the_wrong_trial_is_refused_and_changes_nothing(journal, cli):
    """The second known configuration's creation, overwritten whole: had it not been a creation,
    the records after it would line up just as well (the third is never referred to), so nothing
    tells the repair which trial the later records belong to."""
    number = line_of(journal, 4, nth=1)
    overwrite(journal, number)
    damaged = journal.read_bytes()
    line = one_line_error(cli("store", "repair", "--storage", str(journal)))
    assert line == (f"error: journal {journal}: not repaired: nothing in the damaged bytes of line {number} says "
                    "whether they created a trial or a study (if they did, every later record would go to the wrong "
                    "one); drop them as records that created nothing with --drop-unreadable")
    assert journal.read_bytes() == damaged
    assert sorted(p.name for p in journal.parent.glob("studies.journal*")) == ["studies.journal"]


def test_drop_unreadable_repairs_a_line_that_says_nothing_of_what_it_held(journal, cli, tmp_path):
    number = line_of(journal, 8, nth=3)  # a trial's user attribute (SET_TRIAL_USER_ATTR), overwritten whole
    expected = without_line(journal, number, tmp_path)
    overwrite(journal, number)
    assert one_line_error(cli("store", "repair", "--storage", str(journal))).endswith("with --drop-unreadable")
    repaired = ok(cli("store", "repair", "--storage", str(journal), "--drop-unreadable"))
    assert f"line {number}: not JSON at column 1: Expecting value; lost: " in repaired.stdout
    assert seen_by_optuna(journal) == expected


def test_a_process_that_read_the_journal_before_a_repair_stops_with_one_line(journal):
    reader = open_storage(str(journal))
    assert [s.study_name for s in reader.get_all_studies()] == [NAME]
    break_json(journal, line_of(journal, 3))  # damaged behind the reader's back (a SET_STUDY_SYSTEM_ATTR line)
    assert repair_journal(journal).backup
    with pytest.raises(StorageError, match="replaced by another file while this process had it open"):
        reader.get_all_studies()


def test_check_of_a_journal_with_only_a_write_cut_short_exits_0_and_says_the_next_write_removes_it(journal, cli):
    journal.write_bytes(journal.read_bytes() + b'{"op_code":4,"worker_id":"gone')
    found = check_journal(journal)
    assert (found.damage, found.unfinished_bytes) == ([], 30)
    result = ok(cli("store", "check", "--storage", str(journal)))
    assert "unfinished (30 bytes" in result.stdout


def test_store_commands_refuse_a_database_url_in_one_line(cli, pg_url):
    line = one_line_error(cli("store", "check", "--storage", pg_url))
    assert "not a journal file" in line

