"""How a command ends on a user's mistake: the errors that are one line on stderr and exit 2."""

from __future__ import annotations

from objectives import SetupError
from search.spec import SpecError
from search.study import StudyNotFound
from storage import StorageError


class CommandError(Exception):
    """Anything else a user can cause (a busy port, an unwritable file): one line, exit 2."""


USER_ERRORS = (SpecError, SetupError, StorageError, StudyNotFound, CommandError)
