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
"""

from storage._open import DEFAULT_ENV, NoStore, Storage, StorageError, default_url, mask_url, open_storage, resolve_url

__all__ = ["DEFAULT_ENV", "NoStore", "Storage", "StorageError", "default_url", "mask_url", "open_storage", "resolve_url"]
