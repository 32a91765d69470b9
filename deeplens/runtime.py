"""Finding a running local stack: its runtime file, and a pointer to it in the user's home.

``deeplens up`` records its broker and URL in ``DATA_DIR/stack.json`` and points
``~/.deeplens/current-stack.json`` at that data dir, so every client command
(``ingest``, ``search``, ``status``, ``dlq``, ``topics list``) finds the stack and
its demo key from any folder, without ``DEEPLENS_DATA_DIR`` in the shell.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from deeplens.settings import Settings


def runtime_file(settings: Settings) -> Path:
    return settings.data_dir / "stack.json"


def pointer_file() -> Path:
    home = os.environ.get("DEEPLENS_HOME")
    return (Path(home) if home else Path.home() / ".deeplens") / "current-stack.json"


def write_runtime(settings: Settings, record: dict[str, Any], announce: bool) -> None:
    runtime_file(settings).write_text(json.dumps(record))
    if announce:
        pointer = pointer_file()
        try:
            pointer.parent.mkdir(parents=True, exist_ok=True)
            pointer.write_text(json.dumps({"data_dir": str(settings.data_dir.resolve())}))
        except OSError:  # a read-only home: client commands then need DEEPLENS_DATA_DIR
            pass


def clear_runtime(settings: Settings, announce: bool) -> None:
    runtime_file(settings).unlink(missing_ok=True)
    pointer = pointer_file()
    if announce and pointer.exists():
        try:
            if json.loads(pointer.read_text()).get("data_dir") == str(settings.data_dir.resolve()):
                pointer.unlink()
        except (OSError, ValueError):
            pass


def locate(settings: Settings) -> Settings:
    """``settings`` with ``data_dir`` at the running stack when the shell names none."""
    if os.environ.get("DEEPLENS_DATA_DIR") or runtime_file(settings).exists():
        return settings
    try:
        data_dir = Path(json.loads(pointer_file().read_text())["data_dir"])
    except (OSError, ValueError, KeyError):
        return settings
    if not (data_dir / "stack.json").exists():
        return settings  # that stack has stopped
    return settings.model_copy(update={"data_dir": data_dir})


def read_runtime(settings: Settings) -> Settings:
    """Settings completed with the broker of a running ``deeplens up``, if there is one."""
    settings = locate(settings)
    path = runtime_file(settings)
    if settings.kafka.bootstrap_servers or not path.exists():
        return settings
    recorded = json.loads(path.read_text())
    kafka = settings.kafka.model_copy(update={
        "bootstrap_servers": recorded["bootstrap_servers"],
        "one_record_per_batch": bool(recorded.get("local_broker"))})
    return settings.model_copy(update={"kafka": kafka})


def recorded_url(settings: Settings) -> str | None:
    path = runtime_file(locate(settings))
    try:
        return json.loads(path.read_text()).get("url") if path.exists() else None
    except (OSError, ValueError):
        return None
