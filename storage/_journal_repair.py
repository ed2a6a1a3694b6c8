"""Check a journal file line by line, and repair one: every intact record kept, and a backup.

A line is intact when ``read_record`` reads it. A damaged line may still hold whole records: an
append onto a line cut short (what Optuna's own backend does after a full disk) leaves half a
record followed by a whole one, which is kept. What is lost is one of three things:

- a write cut short (an unfinished last line, or the half record an append continued): its
  writer saw the write fail and no reader ever took it for a record, so dropping it loses nothing;
- a record that created nothing (an attribute, a parameter, a value): dropped, and named;
- a record that created a study or a trial. Study and trial ids are positions in the journal (the
  n-th trial created has id n-1): without it every later id would shift and later records would
  go to the wrong trial. It is replaced by a placeholder that keeps the ids, holding what is still
  readable of it (the trial's study at least).

What the damaged bytes held is read from them: the operation a record starts with, or keys only
some operations write (``"trial_id":`` is never in a creation, ``"study_name":`` only in one). When
nothing in them says, the repair is refused unless told to take them for records that created
nothing (``drop_unreadable``); a later record that refers to an id no kept record creates points
at the one unreadable piece before it, which is then replaced by a placeholder.

The repair holds the journal's lock (``FILE.lock``, Optuna's), writes the kept lines byte for
byte to a new file beside it, checks that Optuna reads that file to the end, links the old file
to ``FILE.bak-<UTC time>`` and moves the new one into its place.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.storages.journal._storage import JournalOperation, JournalStorageReplayResult
from optuna.trial import TrialState

from storage._errors import NoStore, StorageError
from storage._journal_file import DamagedLine, read_record

REPAIR_WORKER = "search-store-repair"  # the worker_id of a placeholder record
RECOVERED_ATTR = "search:recovered"  # a placeholder trial's system attribute: where its creation was lost
RECORD_START = b'{"op_code":'  # how every record Optuna writes begins (its keys in this order)
CREATIONS = (JournalOperation.CREATE_STUDY, JournalOperation.CREATE_TRIAL)


class RepairRefused(StorageError):
    """A damaged journal whose repair would give records to the wrong trials or studies."""


@dataclass(frozen=True)
class Damage:
    """One damaged line: why, how many whole records it still held (kept), and what is lost."""

    line: int
    reason: str
    recovered: int
    lost: str


@dataclass
class JournalCheck:
    """What ``check_journal`` found; ``problem``: why a repair is refused (None: it can keep every
    intact record where it was)."""

    path: str
    lines: int
    records: int  # intact records, those recovered from damaged lines included
    damage: list[Damage]
    unfinished_bytes: int  # an unfinished last line (a write cut short); the next append cuts it
    placeholders: int
    problem: str | None
    studies: int  # what Optuna reads from the kept records
    trials: int
    kept: list[bytes] = field(repr=False, default_factory=list)  # the lines a repair writes

    @property
    def needs_repair(self) -> bool:
        return bool(self.damage or self.unfinished_bytes)

    def as_dict(self) -> dict[str, Any]:
        return {"journal": self.path, "lines": self.lines, "records": self.records, "studies": self.studies,
                "trials": self.trials,
                "damaged": [{"line": d.line, "reason": d.reason, "recovered": d.recovered, "lost": d.lost}
                            for d in self.damage],
                "unfinished_last_line_bytes": self.unfinished_bytes, "placeholders": self.placeholders,
                "repairable": self.problem is None, "problem": self.problem}


@dataclass(frozen=True)
class Repaired:
    check: JournalCheck
    backup: str | None  # None: nothing needed repairing, the file is untouched


def check_journal(path: str | os.PathLike[str], *, drop_unreadable: bool = False) -> JournalCheck:
    """Read the journal line by line under its lock (so an unfinished last line is a write cut
    short, not one in progress) and say what a repair would keep; changes nothing."""
    path = str(path)
    with _locked(path):
        return _check(path, drop_unreadable)


def repair_journal(path: str | os.PathLike[str], *, drop_unreadable: bool = False,
                   now: datetime.datetime | None = None) -> Repaired:
    """Rewrite a damaged journal with every intact record, keeping the old file as
    ``FILE.bak-<UTC time>``; RepairRefused (the file untouched) when that would misplace records.
    ``drop_unreadable``: take damaged bytes that say nothing of what they held for records that
    created nothing."""
    path = str(path)
    with _locked(path):
        check = _check(path, drop_unreadable)
        if not check.needs_repair:
            return Repaired(check, None)
        if check.problem:
            raise RepairRefused(f"journal {path}: not repaired: {check.problem}")
        folder, name = os.path.split(os.path.abspath(path))
        fd, new = tempfile.mkstemp(dir=folder, prefix=f"{name}.repair-")
        try:
            with open(fd, "wb") as f:
                f.writelines(check.kept)
                f.flush()
                os.fsync(f.fileno())
            shutil.copymode(path, new)
            _read_with_optuna(new, check)
            backup = _backup(path, now or datetime.datetime.now(datetime.timezone.utc))
            os.replace(new, path)
        except OSError as e:
            raise StorageError(f"journal {path}: not repaired: {e.strerror or e}") from None
        finally:
            if os.path.exists(new):
                os.unlink(new)
        _sync_folder(path)
        return Repaired(check, backup)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Hold the journal's lock (Optuna's ``FILE.lock``): no worker appends meanwhile."""
    if not os.path.isfile(path):
        raise NoStore(f"journal {path}: no such file")
    lock = JournalFileSymlinkLock(path)
    try:
        lock.acquire()
    except OSError as e:
        raise StorageError(f"journal {path}: cannot take its lock {path}.lock: {e.strerror or e}") from None
    try:
        yield
    finally:
        lock.release()


# --- reading ------------------------------------------------------------------------------------


def _check(path: str, drop_unreadable: bool) -> JournalCheck:
    with open(path, "rb") as f:
        *lines, unfinished = f.read().split(b"\n")
    pieces: list[_Piece] = []
    reasons: dict[int, str] = {}
    for number, line in enumerate(lines, start=1):
        try:
            pieces.append(_Piece(number, line, read_record(line)))
        except DamagedLine as e:
            reasons[number] = str(e)
            pieces += _salvage(number, line)
    problem, studies, trials = _replay(pieces, reasons, drop_unreadable)
    damage = []
    for number, reason in sorted(reasons.items()):
        of_line = [p for p in pieces if p.line == number]
        damage.append(Damage(number, reason, sum(p.record is not None and not p.placeholder for p in of_line),
                             "; ".join(p.lost for p in of_line if p.lost) or "nothing"))
    kept = [p for p in pieces if p.record is not None]
    return JournalCheck(path=path, lines=len(lines) + bool(unfinished), records=sum(not p.placeholder for p in kept),
                        damage=damage, unfinished_bytes=len(unfinished), placeholders=sum(p.placeholder for p in kept),
                        problem=problem, studies=studies, trials=trials, kept=[p.data + b"\n" for p in kept])


UNREADABLE = "unreadable"  # a lost piece whose bytes do not say whether it created something


@dataclass
class _Piece:
    """A line, or part of a damaged one: a record to keep (``record``), or lost bytes: ``held``
    says what they held (a creation's operation, None for a record that created nothing,
    UNREADABLE), ``lost`` says it for a person."""

    line: int
    data: bytes
    record: dict[str, Any] | None
    lost: str = ""
    held: JournalOperation | str | None = None
    torn: bool = False  # a write cut short: it never was a record
    placeholder: bool = False

    def replace_by_placeholder(self, kind: JournalOperation, last_time: str | None) -> str | None:
        """Make this lost piece a placeholder creating what it created (a trial starting at
        ``last_time``, the latest time of an earlier record, unless its own bytes show one); why
        not, if it cannot."""
        record, why_not = _placeholder(kind, self.data, self.line, last_time)
        if record is None:
            self.lost = f"one {kind.name} record ({why_not})"
            return why_not
        self.record, self.data, self.placeholder = record, json.dumps(record, separators=(",", ":")).encode(), True
        self.lost = f"one {kind.name} record, replaced by a placeholder that keeps the ids of later records"
        return None


def _salvage(number: int, line: bytes) -> list[_Piece]:
    """A damaged line's pieces: its whole records, kept, and the bytes around them, lost."""
    pieces = [_Piece(number, data, record) for data, record in _split(line)]
    for i, piece in enumerate(pieces):
        if piece.record is not None:
            continue
        if i == 0 and len(pieces) > 1:  # the next piece is a record: an append continued this one
            piece.torn, piece.lost = True, "nothing: a write cut short, continued by the next append"
            continue
        piece.held = _held(piece.data)
        piece.lost = (f"one {piece.held.name} record" if isinstance(piece.held, JournalOperation)
                      else f"{len(piece.data)} bytes that created nothing" if piece.held is None
                      else f"{len(piece.data)} unreadable bytes")
    return pieces


# Keys that only creations write (the trial's study and start, the study's name and directions),
# and keys that no creation writes.
_CREATION_KEYS = ((JournalOperation.CREATE_STUDY, rb'"study_name":|"directions":\['),
                  (JournalOperation.CREATE_TRIAL, rb'"study_id":\d+,"datetime_start":|"distributions":'))
_OTHER_KEYS = rb'"trial_id":|"user_attr":|"system_attr":|"param_name":'


def _held(data: bytes) -> JournalOperation | str | None:
    """What lost bytes held, as they tell it: the creation they start with or hold, None for
    records that created nothing, UNREADABLE when nothing says."""
    op = re.match(rb'\{"op_code":(\d+),', data)
    started = None
    if op:
        try:
            started = JournalOperation(int(op.group(1)))
        except ValueError:
            pass
    created = {kind for kind, keys in _CREATION_KEYS if re.search(keys, data)}
    if started in CREATIONS:
        created.add(started)
    if len(created) > 1 or (created and re.search(_OTHER_KEYS, data) and started not in CREATIONS):
        return UNREADABLE  # the bytes of more than one record: which was which cannot be told
    if created:
        return created.pop()
    return None if started is not None or re.search(_OTHER_KEYS, data) else UNREADABLE


def _replay(pieces: list[_Piece], reasons: dict[int, str], drop_unreadable: bool) -> tuple[str | None, int, int]:
    """Replay the kept records as Optuna would: the problem (None: ids line up), and the studies
    and trials Optuna reads from them.

    A lost creation becomes a placeholder; so does the one unreadable piece between the last
    creation of a kind and a record that refers to an id nothing kept creates. A record Optuna
    cannot replay is dropped as damaged."""
    tried: set[int] = set()  # lost creations a placeholder was tried for
    while True:
        # Optuna's own replay (its major is pinned: its counters are what ids are); no record is
        # this worker's, so a reference to something missing is skipped, never raised.
        replay = JournalStorageReplayResult(f"{REPAIR_WORKER}-check-")
        last_time: dict[int, str | None] = {}  # by piece: the latest time an earlier record holds
        latest = None
        last_creation = {kind: -1 for kind in CREATIONS}
        missing = None
        for i, piece in enumerate(pieces):
            last_time[i] = latest
            if piece.record is None and piece.held in CREATIONS and i not in tried:
                tried.add(i)
                piece.replace_by_placeholder(piece.held, latest)
            if piece.record is None:
                continue
            record = piece.record
            for key, kind, created in (("study_id", JournalOperation.CREATE_STUDY, replay._next_study_id),
                                       ("trial_id", JournalOperation.CREATE_TRIAL, len(replay._trials))):
                if missing is None and key in record and record[key] >= created:
                    missing = (i, key, kind, record[key] - created)
            if missing is not None:
                break
            try:
                replay.apply_logs([record])
            except Exception as e:  # noqa: BLE001 - a record Optuna cannot replay is damaged too
                reasons.setdefault(piece.line, f"a record Optuna cannot replay ({type(e).__name__}: {e})")
                piece.record, piece.lost = None, "that record"
                continue
            if record["op_code"] in CREATIONS:
                last_creation[JournalOperation(record["op_code"])] = i
            latest = next((record[k] for k in ("datetime_complete", "datetime_start")
                           if isinstance(record.get(k), str)), latest)
        if missing is None:
            break
        i, key, kind, deficit = missing
        where = (f"line {pieces[i].line} refers to {key} {pieces[i].record[key]}, which no intact record before it "
                 "creates")
        holes = [j for j in range(last_creation[kind] + 1, i)
                 if pieces[j].record is None and pieces[j].held in (UNREADABLE, kind)]
        if deficit > 0 or len(holes) != 1:
            return f"{where}: later records would go to the wrong {key.split('_')[0]}", 0, 0
        hole = pieces[holes[0]]
        hole.held = kind
        why_not = hole.replace_by_placeholder(kind, last_time[holes[0]])
        if why_not:
            return f"{where}: line {hole.line} held its {kind.name} record, and {why_not}", 0, 0
    unreadable = [p for p in pieces if p.record is None and p.held == UNREADABLE]
    if unreadable and not drop_unreadable:
        lines = ", ".join(str(n) for n in sorted({p.line for p in unreadable}))
        return (f"nothing in the damaged bytes of line{'s' if len(unreadable) > 1 else ''} {lines} says whether they "
                "created a trial or a study (if they did, every later record would go to the wrong one); "
                "drop them as records that created nothing with --drop-unreadable"), 0, 0
    studies = replay.get_all_studies()
    return None, len(studies), sum(len(replay.get_all_trials(s._study_id, None)) for s in studies)


def _split(line: bytes) -> list[tuple[bytes, dict[str, Any] | None]]:
    """A damaged line as its pieces, in order: whole records (with their record) and the bytes
    around them (with None). A record starts where Optuna starts one, at ``{"op_code":``."""
    text = line.decode("utf-8", "surrogateescape")  # byte for byte; read_record checks each record is UTF-8
    decoder = json.JSONDecoder()
    pieces: list[tuple[bytes, dict[str, Any] | None]] = []
    done = 0
    at = text.find(RECORD_START.decode())
    while at != -1:
        try:
            _, end = decoder.raw_decode(text, at)
            piece = text[at:end].encode("utf-8", "surrogateescape")
            record = read_record(piece)
        except (ValueError, DamagedLine):
            at = text.find(RECORD_START.decode(), at + 1)
            continue
        if at > done:
            pieces.append((text[done:at].encode("utf-8", "surrogateescape"), None))
        pieces.append((piece, record))
        done = end
        at = text.find(RECORD_START.decode(), end)
    if done < len(text):
        pieces.append((text[done:].encode("utf-8", "surrogateescape"), None))
    return pieces


def _placeholder(kind: JournalOperation, piece: bytes, number: int,
                 last_time: str | None) -> tuple[dict[str, Any] | None, str]:
    """A record that creates what the lost one created: its fields that are still whole, and for
    a trial a start time (``last_time`` when its own is lost) and a system attribute that says it
    was recovered; or None and why not (the trial's study, the study's directions cannot be read)."""
    fields = _whole_fields(piece) if piece.startswith(b'{"op_code":%d,' % kind) else {}
    for name, pattern in _NEEDED[kind]:
        if name not in fields and (found := re.search(rb'"' + name.encode() + rb'":(' + pattern + rb")[,}]", piece)):
            fields[name] = json.loads(found.group(1))
    fields.update(op_code=int(kind), worker_id=REPAIR_WORKER)
    if kind == JournalOperation.CREATE_STUDY:
        if not isinstance(fields.get("directions"), list):
            return None, "its directions cannot be read"
        fields.setdefault("study_name", f"recovered-line-{number}")
        return fields, ""
    if type(fields.get("study_id")) is not int:
        return None, "its study cannot be read"
    if "params" in fields and "distributions" not in fields:
        del fields["params"]  # a parameter's value means nothing without its distribution
    if fields.get("datetime_start") is None and fields.get("state", TrialState.RUNNING) != TrialState.WAITING:
        fields["datetime_start"] = last_time or _utc_now()
    fields["system_attrs"] = {**(fields.get("system_attrs") or {}),
                              RECOVERED_ATTR: f"created on damaged journal line {number}: the fields of its creation "
                                              "that were lost are left out; its later records are kept"}
    return fields, ""


# The fields a placeholder cannot do without, and how their values look (searched anywhere in the
# lost bytes when they are not among its whole fields).
_NEEDED = {
    JournalOperation.CREATE_STUDY: (("study_name", rb'"(?:[^"\\]|\\.)*"'), ("directions", rb"\[[0-9,]*\]")),
    JournalOperation.CREATE_TRIAL: (("study_id", rb"\d+"), ("datetime_start", rb'"[0-9T:.+-]+"')),
}


def _whole_fields(piece: bytes) -> dict[str, Any]:
    """The top-level fields a damaged record still holds whole, from its start to its first
    damaged field (a value counts when its separator follows it: a number cut short does not)."""
    text = piece.decode("utf-8", "surrogateescape")
    decoder = json.JSONDecoder()
    fields: dict[str, Any] = {}
    at = 1 if text.startswith("{") else len(text)
    while at < len(text):
        try:
            key, colon = decoder.raw_decode(text, at)
            value, end = decoder.raw_decode(text, colon + 1) if text[colon:colon + 1] == ":" else (None, -1)
        except ValueError:
            break
        if end == -1 or not isinstance(key, str) or text[end:end + 1] not in (",", "}") \
                or any("\udc80" <= c <= "\udcff" for c in text[at:end]):
            break
        fields[key] = value
        if text[end] == "}":
            break
        at = end + 1
    return fields


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


# --- writing ------------------------------------------------------------------------------------


def _read_with_optuna(path: str, check: JournalCheck) -> None:
    """Plain Optuna reads the new file to the end and finds what the check replayed."""
    try:
        storage = optuna.storages.JournalStorage(JournalFileBackend(path))
        studies = storage.get_all_studies()
        trials = sum(len(storage.get_all_trials(s._study_id, deepcopy=False)) for s in studies)
    except Exception as e:  # noqa: BLE001 - whatever it is, the old file stays
        raise StorageError(f"journal {check.path}: not repaired: Optuna cannot read the repaired copy "
                           f"({type(e).__name__}: {e})") from None
    if (len(studies), trials) != (check.studies, check.trials):
        raise StorageError(f"journal {check.path}: not repaired: Optuna read {len(studies)} studies and {trials} "
                           f"trials from the repaired copy, not {check.studies} and {check.trials}")


def _backup(path: str, now: datetime.datetime) -> str:
    """The old file, kept as ``FILE.bak-<UTC time>`` (a hard link: no copy on a full disk)."""
    stamp = now.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in range(100):
        backup = f"{path}.bak-{stamp}" + (f"-{n}" if n else "")
        if os.path.lexists(backup):
            continue
        try:
            os.link(path, backup)
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links
            shutil.copy2(path, backup)
        return backup
    raise StorageError(f"journal {path}: not repaired: 100 backups named {path}.bak-{stamp}* exist already")


def _sync_folder(path: str) -> None:
    fd = os.open(Path(path).parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
