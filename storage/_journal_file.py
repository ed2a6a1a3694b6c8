"""The journal file under the embedded store: Optuna's ``JournalFileBackend``, made safe against
a write cut short and plain about damage.

Optuna's journal is one JSON record per line, appended under a lock file (``FILE.lock``) and read
by every process without one. Two things go wrong with Optuna's own backend:

- A write cut short (a full disk, a killed process) leaves an unfinished last line. Optuna's
  reader skips it while it is last, but the next append lands on the same line, which then holds
  two half records: from then on every reader fails at that line, for every study in the file.
  Here an append first cuts an unfinished last line away (under the lock no other writer is
  half-way through a line, so such a line is a write that failed or whose process died), and a
  write of its own that fails half-way is cut away at once. Nothing is lost by the cut: the
  writer saw its write fail, and no reader ever took an unfinished line for a record.
- A damaged line (not UTF-8, not JSON, not a journal record) ends in a JSONDecodeError or
  UnicodeDecodeError traceback. Here it is ``JournalDamaged``: one line naming the file and the
  line, and the command that repairs it (``storage/_journal_repair.py``).

What an intact record is, is said once: ``read_record``. The file stays a plain Optuna journal
(same lock, same lines), which optuna-dashboard and plain Optuna processes share.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any

from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file
from optuna.storages.journal._storage import JournalOperation

from storage._errors import JournalDamaged, JournalReplaced

_logger = logging.getLogger(__name__)

# The fields each record needs to be replayed, by operation (Optuna's JournalStorage writes them;
# DISCARD_TRIALS comes from Rust writers of the same format, and Optuna skips it).
REQUIRED_FIELDS: dict[JournalOperation, tuple[str, ...]] = {
    JournalOperation.CREATE_STUDY: ("study_name", "directions"),
    JournalOperation.DELETE_STUDY: ("study_id",),
    JournalOperation.SET_STUDY_USER_ATTR: ("study_id", "user_attr"),
    JournalOperation.SET_STUDY_SYSTEM_ATTR: ("study_id", "system_attr"),
    JournalOperation.CREATE_TRIAL: ("study_id", "datetime_start"),
    JournalOperation.SET_TRIAL_PARAM: ("trial_id", "param_name", "param_value_internal", "distribution"),
    JournalOperation.SET_TRIAL_STATE_VALUES: ("trial_id", "state", "values"),
    JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE: ("trial_id", "step", "intermediate_value"),
    JournalOperation.SET_TRIAL_USER_ATTR: ("trial_id", "user_attr"),
    JournalOperation.SET_TRIAL_SYSTEM_ATTR: ("trial_id", "system_attr"),
    JournalOperation.DISCARD_TRIALS: (),
}
ID_FIELDS = ("study_id", "trial_id")


class DamagedLine(ValueError):
    """Why one line is not an intact record (the message is the reason, for a person)."""


def read_record(line: bytes) -> dict[str, Any]:
    """One journal line (its newline included or not) as its record; DamagedLine says why it is none."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DamagedLine(f"not UTF-8 text at byte {e.start + 1}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise DamagedLine(f"not JSON at column {e.colno}: {e.msg}") from None
    op = record.get("op_code") if isinstance(record, dict) else None
    if type(op) is not int or op not in REQUIRED_FIELDS or not isinstance(record.get("worker_id"), str):
        raise DamagedLine("JSON, but not a journal record (no known op_code and worker_id)")
    missing = [key for key in REQUIRED_FIELDS[JournalOperation(op)] if key not in record]
    if missing:
        raise DamagedLine(f"a {JournalOperation(op).name} record without {', '.join(missing)}")
    for key in ID_FIELDS:
        if key in record and (type(record[key]) is not int or record[key] < 0):
            raise DamagedLine(f"a {JournalOperation(op).name} record whose {key} is {record[key]!r}")
    return record


def cut_unfinished_line(fd: int) -> int:
    """Truncate the file open as ``fd`` after its last newline; the bytes cut (0: it ended in one).
    Call it holding the journal's lock: then an unfinished last line is a write that failed."""
    size = os.fstat(fd).st_size
    end = size
    while end > 0:
        start = max(0, end - (1 << 16))
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline != -1:
            end = start + newline + 1
            break
        end = start
    if end < size:
        os.ftruncate(fd, end)
    return size - end


class JournalFile(JournalFileBackend):
    """``JournalFileBackend`` (its lock file, its line format) whose appends never continue an
    unfinished line and whose reads report a damaged line as ``JournalDamaged``."""

    def __init__(self, file_path: str) -> None:
        super().__init__(file_path)
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file read so far

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        # As Optuna's reader: from the byte offset of a line read before, up to the size the file
        # had when reading began, and never an unfinished last line (a write in progress).
        with open(self._file_path, "rb") as f:
            stat = os.fstat(f.fileno())
            if self._identity is None:
                self._identity = (stat.st_dev, stat.st_ino)
            elif self._identity != (stat.st_dev, stat.st_ino):
                raise JournalReplaced(self._file_path)  # the offsets kept below belong to another file
            remaining = stat.st_size
            start = 0
            if log_number_from in self._log_number_offset:
                start = log_number_from
                f.seek(self._log_number_offset[start])
                remaining -= self._log_number_offset[start]
            for log_number, line in enumerate(f, start=start):
                remaining -= len(line)
                if remaining < 0 or not line.endswith(b"\n"):
                    return
                try:
                    record = read_record(line)
                except DamagedLine as e:
                    raise JournalDamaged(self._file_path, log_number + 1, str(e)) from None
                self._log_number_offset.setdefault(log_number + 1, self._log_number_offset[log_number] + len(line))
                if log_number >= log_number_from:
                    yield record

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = memoryview(("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8"))
        with get_lock_file(self._lock):
            fd = os.open(self._file_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                cut = cut_unfinished_line(fd)
                if cut:
                    _logger.warning("journal %s: removed an unfinished last line (%d bytes: a write cut short "
                                    "by a full disk or a killed process) before appending", self._file_path, cut)
                try:
                    while data:  # unbuffered: nothing of a failed write is left to be flushed later
                        data = data[os.write(fd, data):]
                except BaseException:
                    cut_unfinished_line(fd)  # the part of this write that made it to the file
                    raise
                os.fsync(fd)
            finally:
                os.close(fd)
