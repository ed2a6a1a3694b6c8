"""Turn a storage URL into an Optuna storage.

- ``postgresql+psycopg2://user:pass@host/db`` (or any SQLAlchemy URL): many machines, one study.
- a path ending in ``.journal`` / ``.log`` (or ``journal:///path``): the embedded store, a
  journal file that local workers share without lock errors and optuna-dashboard opens.

Both stores run Optuna's heartbeat, so a dead worker's RUNNING trial is failed after the grace
period and re-queued with the same parameters (``RetryHeartbeatStaleTrialCallback``).
"""

from storage._lock import study_lock
from storage._open import DEFAULT_ENV, NoStore, StorageError, default_url, mask_url, open_storage, resolve_url

__all__ = ["DEFAULT_ENV", "NoStore", "StorageError", "default_url", "mask_url", "open_storage", "resolve_url", "study_lock"]
