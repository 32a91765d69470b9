"""``deeplens model``: change the embedding model without downtime.

``migrate --to ARCH/PRETRAINED[/SEED]`` deploys the target beside the current model
and backfills every tenant (run it again to resume); ``status`` shows progress;
``cutover`` makes the target the model search runs on, ``rollback`` switches back,
``finish`` deletes the other model's vectors after ``DEEPLENS_MIGRATION__FINISH_GRACE_S``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from deeplens.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("model", help="change the embedding model without downtime")
    msub = p.add_subparsers(dest="model_command", required=True)
    m = msub.add_parser("migrate", help="deploy a new model beside the current one and "
                        "re-embed every stored image with it (again: resume)")
    m.add_argument("--to", required=True, metavar="ARCH/PRETRAINED[/SEED]")
    m.set_defaults(func=_cmd_migrate)
    for name, text in (("status", "the active model and the backfill's progress"),
                       ("cutover", "make the new model the one search runs on"),
                       ("rollback", "switch search back to the old model (vectors kept)"),
                       ("finish", "end the change; delete the other model's vectors")):
        q = msub.add_parser(name, help=text)
        q.add_argument("--json", action="store_true", help="print the report as JSON")
        q.set_defaults(func=_cmd_step, step=name)


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    import ray

    from cluster.model_ops import start_remote
    from cluster.scale_cli import ray_location
    from deeplens.model_catalog import MigrationRefused
    from deeplens.runtime import read_runtime
    from serve_apps.model_apps import parse_target

    settings = read_runtime(settings)
    try:
        target = parse_target(args.to, settings)
    except ValueError as exc:
        print(f"deeplens model migrate: {exc}", file=sys.stderr)
        return 2
    address, namespace = ray_location(settings)
    try:
        ray.init(address=address, namespace=namespace, log_to_driver=False,
                 logging_level="ERROR")
    except (ConnectionError, RuntimeError) as exc:
        print(f"deeplens model migrate: no Ray at {address} ({exc}); is `deeplens up` "
              "running?", file=sys.stderr)
        return 1
    try:
        report = start_remote(settings, target)
    except MigrationRefused as exc:
        print(f"deeplens model migrate: {exc}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    print("\n".join(report_lines(report)))
    return 0


def _cmd_step(settings: Settings, args: argparse.Namespace) -> int:
    from cluster import model_ops
    from deeplens.model_catalog import MigrationRefused
    from deeplens.runtime import read_runtime

    settings = read_runtime(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    step = {"status": model_ops.describe, "cutover": model_ops.cutover,
            "rollback": model_ops.rollback, "finish": model_ops.finish}[args.step]
    try:
        report = step(settings)
    except MigrationRefused as exc:
        print(f"deeplens model {args.step}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=str) if args.json
          else "\n".join(report_lines(report)))
    return 0


def report_lines(report: dict[str, Any]) -> list[str]:
    """The human form: the active model, the migration, one line per tenant."""
    lines = [f"active model: {report.get('active_model') or '(the configured one)'}"]
    migration = report.get("migration")
    if not migration:
        return [*lines, "no model change under way"]
    lines.append(f"migration {migration['migration_id'][:8]} {migration['state']}: "
                 f"{migration['source_model']} -> {migration['target_model']}, "
                 f"{migration['percent']:.1f} % ({migration['done']} done, "
                 f"{migration['left']} left)")
    if migration.get("error"):
        lines.append(f"  error: {migration['error']}")
    for row in migration["tenants"]:
        eta = "-" if row["eta_s"] is None else f"{row['eta_s']}s"
        lines.append(f"  {row['tenant']:20} {row['percent']:5.1f} %  done {row['done']}, "
                     f"left {row['left']}, failed {row['failed']}, "
                     f"{row['rate_per_s']:.1f}/s, ETA {eta}")
    if report.get("deleted_model"):
        lines.append(f"deleted the vectors of {report['deleted_model']}")
    return lines
