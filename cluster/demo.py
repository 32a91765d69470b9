"""``make demo``: bring the stack up and show what it does."""

from __future__ import annotations

from cluster.stack import LocalStack
from deeplens.settings import Settings


def run_demo(settings: Settings, smoke: bool = False) -> int:
    with LocalStack(settings) as stack:
        stack.print_banner()
        print("demo: broker and topics are running; the pipeline stages arrive with "
              "their issues.", flush=True)
        if smoke:
            return 0
        stack.wait()
    return 0
