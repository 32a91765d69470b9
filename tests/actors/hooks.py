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


def _armed(stage: str):
    def factory(settings: Settings):
        """Kill the actor between produce and commit whenever ``arm-<stage>`` exists."""
        arm = settings.data_dir / f"arm-{stage}"

        def hook(_envelopes) -> None:
            try:
                arm.unlink()
            except FileNotFoundError:
                return
            os._exit(1)

        return hook

    return factory


die_when_armed_validation = _armed("validation")
die_when_armed_indexing = _armed("indexing")


def hold_while_marked_indexing(settings: Settings):
    """Hold each indexing batch before its commit while ``hold-indexing`` exists in the
    data dir: images pile up in flight, as behind a slow GPU."""
    import time

    marker = settings.data_dir / "hold-indexing"

    def hook(_envelopes) -> None:
        while marker.exists():
            time.sleep(0.1)

    return hook
