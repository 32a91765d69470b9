"""``deeplens import``: the operator's bulk path, run in this process against the
settings' catalog, broker and storage (no byte crosses HTTP).

Running the same import again resumes it where it stopped (after a kill, a Ctrl-C or
a cancel) and adds nothing it already added; ``--status`` and ``--cancel`` act on a
job running anywhere, e.g. one started through ``POST /ops/imports``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from deeplens.settings import Settings
from deeplens.sources import SourceRefused, parse_source


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("import", help="import a bucket prefix, a shared folder or tar "
                       "shards for a tenant (operator; resumable)")
    p.add_argument("source", help="s3://bucket/prefix, or an absolute folder (images and "
                   "WebDataset .tar shards) under DEEPLENS_IMPORTS__ALLOWED_ROOTS")
    p.add_argument("--tenant", required=True)
    p.add_argument("--copy", action="store_true", help="copy the images into DeepLens "
                   "storage (default: referenced where they lie)")
    p.add_argument("--status", action="store_true", help="show the import's progress")
    p.add_argument("--cancel", action="store_true", help="stop the import after its "
                   "current chunk (run it again to resume)")
    p.set_defaults(func=cmd_import)


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    from deeplens.runtime import read_runtime
    from ingestion.catalog import Catalog
    from ingestion.import_jobs import JobStore, job_id_of

    settings = read_runtime(settings)
    try:
        source = parse_source(args.source, settings.imports.allowed_roots)
    except SourceRefused as exc:
        print(f"deeplens import: refused: {exc}", file=sys.stderr)
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # where a SQLite catalog lives
    catalog = Catalog(settings.effective_catalog_url)
    jobs = JobStore(catalog.engine)
    job_id = job_id_of(args.tenant, source.uri(), args.copy)
    if args.status or args.cancel:
        if args.cancel and not jobs.cancel(job_id):
            print(f"deeplens import: no import of {source.uri()} for {args.tenant}",
                  file=sys.stderr)
            return 2
        return _show(catalog, jobs, job_id)
    return _run(settings, catalog, jobs, args.tenant, source.uri(), args.copy)


def _show(catalog: Any, jobs: Any, job_id: str) -> int:
    from ingestion.bulk_import import pipeline_counts

    job = jobs.get(job_id)
    if job is None:
        print("deeplens import: no such import", file=sys.stderr)
        return 2
    print(progress_line(job, pipeline_counts(catalog, job)))
    return 0


def _run(settings: Settings, catalog: Any, jobs: Any, tenant: str, source: str,
         copy: bool) -> int:
    from deeplens.kafka import EventProducer
    from deeplens.storage import make_storage
    from ingestion.bulk_import import Importer, pipeline_counts

    job = jobs.start(tenant, source, copy)
    if job is None:
        print("deeplens import: this import is running in another process; --status "
              "shows it, --cancel stops it", file=sys.stderr)
        return 2
    producer = EventProducer(settings.kafka, prefix=settings.kafka.topic_prefix)
    importer = Importer(settings, catalog, make_storage(settings), producer, jobs)
    last = [0.0]

    def show(current: Any) -> None:
        if time.monotonic() - last[0] > 1:
            last[0] = time.monotonic()
            print("\r" + progress_line(current, pipeline_counts(catalog, current)), end="",
                  file=sys.stderr, flush=True)

    try:
        final = importer.run(job, on_chunk=show)
    except KeyboardInterrupt:
        jobs.finish(job.job_id, "cancelled")
        print("\ndeeplens import: interrupted; run the same command again to resume",
              file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - recorded on the job; one line, no traceback
        print(f"\ndeeplens import: failed: {exc}", file=sys.stderr)
        return 1
    finally:
        producer.close()
    print("\r" + progress_line(final, pipeline_counts(catalog, final)), file=sys.stderr)
    print(final.job_id)
    return 0 if final.state == "done" else 1


def progress_line(job: Any, statuses: dict[str, int]) -> str:
    rate, eta_s = job.rate(), job.eta_s(statuses)
    eta = "-" if eta_s is None else f"{eta_s:.0f}s"
    return (f"import {job.job_id[:8]} {job.state}: listed {job.listed}"
            f"{'' if job.listing_done else '+'}, queued {job.queued}, skipped {job.skipped}, "
            f"refused {job.refused}, indexed {statuses.get('indexed', 0)}, failed "
            f"{statuses.get('failed', 0)}, {rate:.1f}/s, ETA {eta}")
