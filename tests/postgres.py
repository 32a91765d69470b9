"""A real PostgreSQL server for tests: Debian's ``postgresql`` package, started with
``initdb`` + ``pg_ctl`` in a temporary folder on a free port (as the unprivileged
``postgres`` user when the tests run as root). Each test gets a database of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deeplens.broker import free_port

INSTALL_HINT = "apt-get install postgresql (Debian's package; .ci/run installs it)"


def pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]  # postgres refuses to run as root


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yields a SQLAlchemy URL of a running server (without a database name)."""
    binaries = pg_bin()
    if binaries is None:
        raise FileNotFoundError(INSTALL_HINT)
    folder = Path(tempfile.mkdtemp(prefix="deeplens-pg-"))
    data, socket_dir = folder / "data", folder / "sock"
    socket_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(socket_dir, "postgres")
        folder.chmod(0o700)
    port = free_port()
    subprocess.run(_as_server_user([str(binaries / "initdb"), "-D", str(data), "-U",
                                    "deeplens", "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True)
    subprocess.run(_as_server_user([
        str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w",
        "-o", f"-p {port} -h 127.0.0.1 -k {socket_dir} -c fsync=off -c max_connections=200",
        "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://deeplens@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-m",
                                        "immediate", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """A new, empty database on the server; its SQLAlchemy URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = server_url.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    for attempt in range(20):
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            break
        except psycopg.OperationalError:
            if attempt == 19:
                raise
            time.sleep(0.25)
    return f"{server_url}/{name}"
