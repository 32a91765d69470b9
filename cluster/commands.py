"""Commands that launch DeepLens, plugged into the ``deeplens`` CLI by entry point."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.stages import RETRYING
from deeplens.settings import Settings


def _cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from cluster.stack import LocalStack

    if args.data:
        settings = settings.model_copy(update={"data_dir": Path(args.data)})
    if args.ray_address:
        settings = settings.model_copy(update={"ray_address": args.ray_address})
    if args.port:
        settings = settings.model_copy(
            update={"serve": settings.serve.model_copy(update={"port": args.port})})
    from cluster.stack import StackError

    try:
        with LocalStack(settings, announce=True) as stack:
            stack.stop_on_signals()  # before the banner: a Ctrl-C right after it is clean too
            stack.print_banner()
            stack.wait()
    except StackError as exc:  # one line per problem, no traceback
        for line in str(exc).splitlines():
            print(f"deeplens up: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # during start-up: what was started has been stopped
        print("deeplens up: interrupted while starting; stopped", file=sys.stderr)
        return 130
    return 0


def _cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from cluster.demo import run_demo

    return run_demo(settings, smoke=args.smoke)


def _runtime(settings: Settings) -> Settings:
    """Fill in the broker of a running `deeplens up` (it records it in the data dir)."""
    from deeplens.runtime import read_runtime

    return read_runtime(settings)


def _cmd_dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    from deeplens.dead_letters import read_failures, select

    settings = _runtime(settings)
    letters = select(read_failures(settings.kafka), stage=args.stage, since=args.since,
                     replayable_only=not args.all)
    print(f"{'failed at':20} {'stage':10} {'reason':20} {'att':>3}  {'image':32}  message")
    for letter in letters:
        f = letter.failure
        print(f"{f.failed_at:%Y-%m-%d %H:%M:%S}  {f.stage:10} {f.reason:20} {f.attempt:>3}  "
              f"{(f.image_id or '-'):32}  {f.message[:60]}")
    print(f"{len(letters)} {'failures' if args.all else 'dead letters'}")
    return 0


def _cmd_dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    from deeplens.dead_letters import read_failures, replay_letters, select

    settings = _runtime(settings)
    letters = select(read_failures(settings.kafka), stage=args.stage, since=args.since)
    replayed, skipped = replay_letters(settings.kafka, letters)
    print(f"replayed {replayed} dead letters to their stage's retry topic; {skipped} skipped "
          "(no stage to replay into)")
    return 0


def _cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import timedelta

    from ingestion.reconcile import reconcile

    settings = _runtime(settings)
    report = reconcile(settings, timedelta(minutes=args.older_than), dry_run=args.dry_run)
    verb = "would re-publish" if args.dry_run else "re-published"
    print(f"{verb} {len(report.republished)} unfinished images; "
          f"{len(report.missing_bytes)} had lost their bytes and were failed")
    return 0


def _cmd_scale(settings: Settings, args: argparse.Namespace) -> int:
    from cluster.scale_cli import cmd_scale

    return cmd_scale(settings, args)


def _since(text: str):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    from deeplens.topics import duration_ms

    if text[-1] in "smhd" and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(milliseconds=duration_ms(text))
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("up", help="start the whole pipeline on this machine")
    p.add_argument("--port", type=int, default=0, help="HTTP port (default 8000)")
    p.add_argument("--data", default="", help="data folder (default ./data)")
    p.add_argument("--ray-address", default="", help="join a Ray cluster ('auto' on a head)")
    p.set_defaults(func=_cmd_up)

    dlq = sub.add_parser("dlq", help="dead letters on images.failed")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, func, text in (("list", _cmd_dlq_list, "show dead letters"),
                             ("replay", _cmd_dlq_replay, "re-publish dead letters after a fix")):
        p = dsub.add_parser(name, help=text)
        p.add_argument("--stage", choices=RETRYING)
        p.add_argument("--since", type=_since, help="ISO time or an age like 2h, 30m")
        if name == "list":
            p.add_argument("--all", action="store_true", help="permanent failures too")
        p.set_defaults(func=func)

    p = sub.add_parser("reconcile", help="restart images stored but never indexed")
    p.add_argument("--older-than", type=float, default=10.0, help="minutes (default 10)")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=_cmd_reconcile)

    from cluster.client_cli import client_command
    from cluster.stages import STAGES

    p = sub.add_parser("scale", help="set a stage's actors or the Embedder's replicas, live")
    p.add_argument("name", choices=[s.name for s in STAGES] + ["embedder"])
    p.add_argument("count", metavar="N|auto", help="a count held until `auto` hands it back "
                   "to the scaling controller")
    p.set_defaults(func=client_command(_cmd_scale))

    from cluster.import_cli import register as register_import
    from cluster.model_cli import register as register_model

    register_import(sub)
    register_model(sub)

    p = sub.add_parser("demo", help="deeplens up, plus a sample run (make demo)")
    p.add_argument("--smoke", action="store_true", help="exit 0 once the samples went through")
    p.set_defaults(func=_cmd_demo)
