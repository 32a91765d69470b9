"""Fault-injection hooks that stage actors load by import path (StageSpec.before_commit)."""

from __future__ import annotations

import os

from deeplens.settings import Settings


def die_once(settings: Settings):
    """Kill the actor process after its first batch is produced, before the commit.

    A marker file in the data dir makes it happen once: the restarted actor lives on.
    """
    marker = settings.data_dir / "died-once"

    def hook(_envelopes) -> None:
        if not marker.exists():
            marker.write_text("x")
            os._exit(1)

    return hook
