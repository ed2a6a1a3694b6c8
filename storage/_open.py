"""A storage URL -> the storage (journal file, SQLite or PostgreSQL), or one StorageError line."""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback

from storage._errors import NoStore, StorageError
from storage._journal import HeartbeatJournalStorage
from storage._rdb import DEFAULT_RETRY_SECONDS, LOCKING_DIALECTS, ReconnectingRDBStorage

DEFAULT_ENV = "SEARCH_STORAGE"
RETRY_ENV = "SEARCH_DB_RETRY_SECONDS"  # how long a database call waits for a lost connection to come back
JOURNAL_SUFFIXES = (".journal", ".log")
SUPPORTED = ("PostgreSQL (postgresql://user@host/db) for many machines; SQLite (sqlite:///path/to/studies.db) "
             f"or a journal file (a path ending in {' or '.join(JOURNAL_SUFFIXES)}) for one machine")

# What ``open_storage`` returns: both have ``study_lock`` and Optuna's heartbeat.
Storage = HeartbeatJournalStorage | ReconnectingRDBStorage


def default_url() -> str:
    """The embedded store: one journal file per user, shared by every local worker."""
    data_home = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return str(data_home / "search" / "studies.journal")


def resolve_url(url: str | None) -> str:
    """``--storage``, else ``$SEARCH_STORAGE``, else the embedded default."""
    return url or os.environ.get(DEFAULT_ENV) or default_url()


PLACEHOLDER_PASSWORD = "change-me"  # .env.example's: a store left with it is open to anyone who read the example


def mask_url(url: str) -> str:
    """The URL as it may be shown: every password replaced by ``***``: after ``user:`` (also when
    it holds an unencoded ``@``, or the URL lacks its scheme) and in a ``password=`` query."""
    if url.startswith("journal://") or ("://" not in url and Path(url).suffix in JOURNAL_SUFFIXES):
        return url  # a journal file path: nothing secret in it
    scheme, sep, rest = url.partition("://") if "://" in url else ("", "", url)
    base, qmark, query = rest.partition("?")
    if "@" in base:
        creds, host = base.rsplit("@", 1)
        if ":" in creds:
            base = f"{creds.split(':', 1)[0]}:***@{host}"
    if qmark:
        query = "&".join(f"{part.split('=', 1)[0]}=***" if part.split("=", 1)[0].lower() == "password" else part
                         for part in query.split("&"))
    return f"{scheme}{sep}{base}{qmark}{query}"


def url_passwords(url: str) -> list[str]:
    """Every password the URL holds, in whichever form (for scrubbing messages that may echo them)."""
    scheme_less = url.partition("://")[2] if "://" in url else url
    base, _, query = scheme_less.partition("?")
    found = []
    if "@" in base:
        creds = base.rsplit("@", 1)[0]
        if ":" in creds:
            found.append(creds.split(":", 1)[1])
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key.lower() == "password" and value:
            found.append(value)
    from urllib.parse import unquote

    found += [unquote(p) for p in found]
    return sorted({p for p in found if p}, key=len, reverse=True)


def check_url(url: str) -> None:
    """Refuse, in one line, a URL whose password would be misread or is the example's placeholder."""
    if "://" not in url and mask_url(url) != url:
        raise StorageError(f"storage {mask_url(url)}: a URL without its scheme; give {SUPPORTED}")
    if "://" in url and not url.startswith(("journal://", "sqlite:")):
        base = url.partition("://")[2].partition("?")[0]
        if base.count("@") > 1:
            raise StorageError(f"storage {mask_url(url)}: more than one '@' before the host: "
                               "write an '@' of the password as %40")
    if PLACEHOLDER_PASSWORD in url_passwords(url):
        raise StorageError(f"storage {mask_url(url)}: the password is the placeholder of .env.example; "
                           "set POSTGRES_PASSWORD in .env (and the URL) to a password of your own")


def with_driver(url: str) -> str:
    """``postgresql://`` (and ``postgres://``) with the driver this package ships, psycopg2:
    SQLAlchemy 2.1 would otherwise look for psycopg 3, which is not installed."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg2://" + url[len(bare):]
    return url


HEARTBEAT_INTERVAL_ENV = "SEARCH_HEARTBEAT_INTERVAL"
GRACE_PERIOD_ENV = "SEARCH_GRACE_PERIOD"
DEFAULT_HEARTBEAT_INTERVAL = 10
GRACE_INTERVALS = 6  # the default grace: several intervals, so that one slow write does not fail a live trial


def heartbeat_settings() -> tuple[int, int]:
    """``$SEARCH_HEARTBEAT_INTERVAL`` and ``$SEARCH_GRACE_PERIOD`` in whole seconds, at least 1 (as
    Optuna's RDB storage asks; an interval of 0 would spin the heartbeat thread), and a grace no
    shorter than the interval (else a live trial is failed between two beats); else one StorageError line."""
    interval = _seconds(HEARTBEAT_INTERVAL_ENV, DEFAULT_HEARTBEAT_INTERVAL)
    grace = _seconds(GRACE_PERIOD_ENV, GRACE_INTERVALS * interval)
    if grace < interval:
        raise StorageError(f"{GRACE_PERIOD_ENV}={grace} is shorter than {HEARTBEAT_INTERVAL_ENV}={interval}: a live "
                           f"trial would be failed between two beats; give at least {interval} "
                           f"(default {GRACE_INTERVALS} intervals)")
    return interval, grace


def _seconds(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise StorageError(f"{name}={raw!r}: expected a whole number of seconds, at least 1 (unset: {default})")
    return value


def _retry_seconds() -> float:
    raw = os.environ.get(RETRY_ENV, "")
    try:
        seconds = float(raw) if raw.strip() else DEFAULT_RETRY_SECONDS
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise StorageError(f"{RETRY_ENV}={raw}: expected the seconds a database call waits for a lost "
                           f"connection (a number, 0 or more; default {DEFAULT_RETRY_SECONDS:g})")
    return seconds


def journal_path(url: str) -> Path | None:
    """The journal file a storage URL names (a path, or ``journal://PATH``); None for a database URL."""
    if url.startswith("journal://"):
        return Path(url[len("journal://"):])
    if "://" not in url:
        return Path(url)
    return None


def _dialect(url: str) -> str:
    """The URL's database, from its scheme alone: known before any driver is imported."""
    return url.split("://", 1)[0].split("+", 1)[0].lower()


def _sqlite_url(url: str) -> tuple[str, Path]:
    """The SQLite URL with its file's absolute path (what the lock file sits beside), and that path."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:
        raise StorageError(f"storage {mask_url(url)}: not a SQLite URL: {e}") from None
    if parsed.database in (None, "", ":memory:") or parsed.query.get("uri"):
        raise StorageError(f"storage {mask_url(url)}: SQLite needs a database file path, as "
                           "sqlite:///path/to/studies.db (not in-memory: it is gone when its process ends; not a file: URI)")
    path = Path(parsed.database).expanduser().absolute()
    return parsed.set(database=str(path)).render_as_string(hide_password=False), path


def open_storage(url: str | None = None, *, create: bool = True) -> Storage:
    """Open the storage; raises StorageError in one line. A journal or SQLite file that does not
    exist is created, unless ``create`` is False (commands that only read): then it is NoStore.
    Only stores whose ``study_lock`` excludes every worker are opened: any other database is
    refused here, before its driver is imported or anything is created."""
    url = resolve_url(url)
    check_url(url)
    heartbeat = heartbeat_settings()  # a bad setting is refused before anything is created
    path = journal_path(url)
    if not create and path is not None and path.suffix in JOURNAL_SUFFIXES and not path.exists():
        raise NoStore(f"storage {mask_url(url)}: no such journal file (the first `search worker` on it creates it)")
    if path is None:
        dialect = _dialect(with_driver(url))
        if dialect not in LOCKING_DIALECTS:
            raise StorageError(f"storage {mask_url(url)}: {dialect or 'this URL'} is not supported "
                               f"(a study lock must exclude every worker): give {SUPPORTED}")
        if dialect == "sqlite":
            url, file = _sqlite_url(url)
            if not create and not file.exists():
                raise NoStore(f"storage {mask_url(url)}: no such SQLite file (the first `search worker` on it creates it)")
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(f"storage {mask_url(url)}: cannot create its folder: {e.strerror or e}") from None
    with warnings.catch_warnings():
        # The heartbeat and its retry callback are marked experimental; they are what we want.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _open(url, *heartbeat)


def _open(url: str, interval: int, grace: int) -> Storage:
    retry = RetryHeartbeatStaleTrialCallback(max_retry=3)
    path = journal_path(url)
    if path is not None:
        if path.suffix not in JOURNAL_SUFFIXES:
            raise StorageError(f"storage {mask_url(url)!r}: not a storage URL; give {SUPPORTED}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return HeartbeatJournalStorage(
                str(path), heartbeat_interval=interval, grace_period=grace, heartbeat_stale_trial_callback=retry
            )
        except OSError as e:
            raise StorageError(f"storage {mask_url(url)}: cannot open journal file: {e.strerror or e}") from None
    url = with_driver(url)
    retry_seconds = _retry_seconds()
    engine_kwargs: dict = {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True, "pool_recycle": 1800}
    if url.startswith("postgresql"):
        # Names this process's connections in pg_stat_activity (which worker holds what). A
        # connection attempt to a server that does not answer gives up after 10 s, and a
        # connection whose server vanished (a failover, a network cut) is found dead within a
        # minute: the retry then reconnects instead of waiting on it for TCP's hours.
        engine_kwargs["connect_args"] = {"application_name": application_name(), "connect_timeout": 10,
                                         "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                                         "keepalives_count": 3}
    try:
        return ReconnectingRDBStorage(
            url,
            # A worker holds at most a couple of connections; pre-ping replaces ones the
            # server dropped (restart, idle timeout, pg_terminate_backend) before use, and a
            # call whose connection dies under it is retried for retry_seconds (storage/_rdb.py).
            engine_kwargs=engine_kwargs,
            retry_seconds=retry_seconds,
            heartbeat_interval=interval,
            grace_period=grace,
            heartbeat_stale_trial_callback=retry,
        )
    except Exception as e:  # sqlalchemy/psycopg2 errors may carry the URL: never echo it raw
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"storage {mask_url(url)}: cannot connect: {_scrub(reason, url)}") from None


def application_name() -> str:
    """``search@HOST:PID``, as PostgreSQL shows this process's connections."""
    return f"search@{socket.gethostname()}:{os.getpid()}"[-63:]


def _scrub(text: str, url: str) -> str:
    for password in url_passwords(url):
        text = text.replace(password, "***")
    return text
