"""``/ops/imports``: the operator's bulk import over HTTP (admin token only).

Outside ``/v1/`` on purpose: a tenant's key is never an admin credential, and the
tenant middleware never sees these requests. The job runs on a thread of the replica
that took the request; its state lives in the catalog, so any replica answers about
it, cancels it, or resumes it (a POST of the same import) after a restart.
"""

from __future__ import annotations

import hmac
import threading
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from deeplens.auth import problems
from deeplens.sources import SourceRefused, parse_source
from ingestion.bulk_import import Importer, pipeline_counts
from ingestion.import_jobs import ImportJob, JobStore, job_id_of
from ingestion.services import Services

router = APIRouter(tags=["ops"], include_in_schema=False)  # operators only, not the tenant API
_RESPONSES = problems({403: "not the admin token", 404: "no such import",
                       422: "the source is refused (outside the allowed roots, '..', "
                            "another bucket) or malformed"})


class ImportRequest(BaseModel):
    tenant: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    source: str = Field(min_length=1, max_length=500,
                        description="s3://bucket/prefix or an absolute folder")
    mode: Literal["reference", "copy"] = Field(
        "reference", description="reference objects where they lie, or copy them into "
        "DeepLens storage")


def require_admin(request: Request) -> Services:
    svc: Services = request.app.state.services
    token = svc.settings.ops.admin_token.get_secret_value()
    if not token:
        raise HTTPException(403, "admin routes are off: set DEEPLENS_OPS__ADMIN_TOKEN")
    given = request.headers.get("authorization", "").partition(" ")[2].strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(403, "this needs the admin token (Authorization: Bearer); a "
                                 "tenant's API key is never one")
    return svc


def describe(svc: Services, job: ImportJob) -> dict[str, Any]:
    """Progress: listed, queued, skipped, refused; the pipeline's statuses of the job's
    images; rate (queued per second this run) and ETA once the listing is complete."""
    counts = pipeline_counts(svc.catalog, job)
    rate, eta = job.rate(), job.eta_s(counts)
    return {"job_id": job.job_id, "tenant": job.tenant_id, "source": job.source,
            "copy": job.copy, "state": job.state, "listed": job.listed, "queued": job.queued,
            "skipped": job.skipped, "refused": job.refused, "indexed": counts.get("indexed", 0),
            "failed": counts.get("failed", 0), "statuses": counts,
            "listing_done": job.listing_done, "rate_per_s": round(rate, 1),
            "eta_s": None if eta is None else round(eta), "error": job.error}


def start_import(svc: Services, tenant: str, source_text: str, copy: bool) -> ImportJob:
    """Check the source, then begin or resume its job on a background thread."""
    source = parse_source(source_text, svc.settings.imports.allowed_roots)
    jobs = JobStore(svc.catalog.engine)
    job = jobs.start(tenant, source.uri(), copy)
    if job is None:  # already running elsewhere: report it
        running = jobs.get(job_id_of(tenant, source.uri(), copy))
        assert running is not None
        return running
    importer = Importer(svc.settings, svc.catalog, svc.storage, svc.producer, jobs)
    threading.Thread(target=_run_quietly, args=(importer, job), daemon=True,
                     name=f"import-{job.job_id[:8]}").start()
    return job


def _run_quietly(importer: Importer, job: ImportJob) -> None:
    try:
        importer.run(job)
    except Exception:  # noqa: BLE001 - recorded on the job and logged by run()
        pass


@router.post("/ops/imports", status_code=202, responses=_RESPONSES)
async def create_import(request: Request, body: ImportRequest) -> dict[str, Any]:
    """Import every image under an allowed source for a tenant (resumes the same import)."""
    svc = require_admin(request)
    try:
        job = await run_in_threadpool(start_import, svc, body.tenant, body.source,
                                     body.mode == "copy")
    except SourceRefused as exc:
        raise HTTPException(422, str(exc)) from None
    return await run_in_threadpool(describe, svc, job)


@router.get("/ops/imports/{job_id}", responses=_RESPONSES)
async def import_progress(request: Request, job_id: str) -> dict[str, Any]:
    svc = require_admin(request)
    job = await run_in_threadpool(JobStore(svc.catalog.engine).get, job_id)
    if job is None:
        raise HTTPException(404, "no such import")
    return await run_in_threadpool(describe, svc, job)


@router.delete("/ops/imports/{job_id}", status_code=202, responses=_RESPONSES)
async def cancel_import(request: Request, job_id: str) -> dict[str, Any]:
    """Stop after the current chunk; POST the same import again to resume it."""
    svc = require_admin(request)
    jobs = JobStore(svc.catalog.engine)
    if not await run_in_threadpool(jobs.cancel, job_id):
        raise HTTPException(404, "no such import")
    job = await run_in_threadpool(jobs.get, job_id)
    assert job is not None
    return await run_in_threadpool(describe, svc, job)
