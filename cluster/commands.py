"""Commands that launch DeepLens, plugged into the ``deeplens`` CLI by entry point."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deeplens.settings import Settings


def _cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from cluster.stack import LocalStack

    if args.data:
        settings = settings.model_copy(update={"data_dir": Path(args.data)})
    if args.port:
        settings = settings.model_copy(
            update={"serve": settings.serve.model_copy(update={"port": args.port})})
    from cluster.stack import StackError

    try:
        with LocalStack(settings) as stack:
            stack.print_banner()
            stack.wait()
    except StackError as exc:
        print(f"deeplens up: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from cluster.demo import run_demo

    return run_demo(settings, smoke=args.smoke)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("up", help="start the whole pipeline on this machine")
    p.add_argument("--port", type=int, default=0, help="HTTP port (default 8000)")
    p.add_argument("--data", default="", help="data folder (default ./data)")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("demo", help="deeplens up, plus a sample run (make demo)")
    p.add_argument("--smoke", action="store_true", help="exit 0 once the samples went through")
    p.set_defaults(func=_cmd_demo)
