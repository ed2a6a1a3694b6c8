"""The errors a store reports to its user: each is one line, and never holds a password."""

from __future__ import annotations

import shlex


class StorageError(Exception):
    """A store that cannot be opened or read, or a bad storage setting; the message never holds a password."""


class NoStore(StorageError):
    """A journal file that does not exist, opened by a command that only reads."""


class JournalDamaged(StorageError):
    """A journal line that is not an intact record: bytes that are not UTF-8, not JSON, or JSON
    that is no journal record. Reading stops there; ``search store repair`` keeps every intact record."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        self.path, self.line, self.reason = path, line, reason
        where = shlex.quote(path)
        super().__init__(f"journal {path} line {line}: damaged ({reason}); `search store check --storage {where}` "
                         f"shows the damage, `search store repair --storage {where}` keeps every intact record "
                         "(and a backup)")


class JournalReplaced(StorageError):
    """The journal file was replaced (by ``search store repair``, say) while this process read it:
    what it read before no longer lines up with the file."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"journal {path}: replaced by another file while this process had it open "
                         "(`search store repair`?); start this command again")

