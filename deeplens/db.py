"""The catalog database: engines, and its schema brought up to date by Alembic.

One database holds the catalog (images, duplicates, usage), the content hashes of
the dedup stage and the tombstones: SQLite in the data dir by default, PostgreSQL
(``postgresql+psycopg://...``) on a cluster. Every process that opens it runs
``migrate`` once; concurrent starts are serialised (an advisory lock on
PostgreSQL, a lock file beside a SQLite file), and every migration is written to be
a no-op where its change is already there.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event

MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_KEY = 0x0DEE_71E5  # pg_advisory_xact_lock key of DeepLens migrations
_migrated: set[str] = set()
_engines: dict[str, sa.Engine] = {}
_guard = threading.Lock()


def make_engine(url: str) -> sa.Engine:
    """The process's engine for ``url`` (one pool per database), schema up to date."""
    with _guard:
        engine = _engines.get(url)
        if engine is None:
            is_sqlite = url.startswith("sqlite")
            engine = sa.create_engine(
                url, pool_pre_ping=True,
                connect_args={"timeout": 30, "check_same_thread": False} if is_sqlite else {})
            if is_sqlite:
                sa_event.listen(engine, "connect", _sqlite_pragmas)
            _engines[url] = engine
    migrate(engine)
    return engine


def migrate(engine: sa.Engine) -> None:
    """Upgrade the schema to the newest revision (once per process and database)."""
    from alembic import command
    from alembic.config import Config

    key = engine.url.render_as_string(hide_password=True)
    with _guard:
        if key in _migrated:
            return
        with _file_lock(engine), engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})"))
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        _migrated.add(key)


def current_revision(engine: sa.Engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _file_lock(engine: sa.Engine):  # type: ignore[no-untyped-def]
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    import fcntl

    with open(f"{database}.migrate-lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while the projection writes from another process.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
