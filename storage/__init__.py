"""Turn a storage URL into an Optuna storage.

- ``postgresql+psycopg2://user:pass@host/db`` (a bare ``postgresql://`` gets psycopg2): many
  machines, one study.
- ``sqlite:///path/to/studies.db``: one machine, no server.
- a path ending in ``.journal`` / ``.log`` (or ``journal:///path``): the embedded store, a
  journal file that local workers share without lock errors and optuna-dashboard opens.

Any other database is refused when it is opened: each store has a per-study lock
(``storage.study_lock(name)``) that must exclude every worker, and only these three provide one
(a PostgreSQL advisory lock; an flock beside the SQLite or journal file).

Every store runs Optuna's heartbeat, so a dead worker's RUNNING trial is failed after the grace
period and re-queued with the same parameters (``RetryHeartbeatStaleTrialCallback``).

A journal file never has a line continued after a write cut short; a damaged one is reported in
one line (``JournalDamaged``), checked with ``check_journal`` and repaired with ``repair_journal``.
"""

from storage._errors import JournalDamaged, NoStore, StorageError
from storage._journal_repair import JournalCheck, check_journal, repair_journal
from storage._open import DEFAULT_ENV, Storage, default_url, journal_path, mask_url, open_storage, resolve_url

__all__ = ["DEFAULT_ENV", "JournalCheck", "JournalDamaged", "NoStore", "Storage", "StorageError", "check_journal",
           "default_url", "journal_path", "mask_url", "open_storage", "repair_journal", "resolve_url"]
