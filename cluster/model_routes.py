"""``/ops/model``: a model change over HTTP (admin token only, as ``/ops/imports``):
its progress, start (or resume), cutover, rollback and finish. Mounted by the Gateway."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from cluster import model_ops
from deeplens.auth import problems
from deeplens.model_catalog import MigrationRefused
from ingestion.routes_import import require_admin

router = APIRouter(tags=["ops"], include_in_schema=False)  # operators only
_RESPONSES = problems({403: "not the admin token",
                       409: "the step does not apply to the migration's state",
                       422: "the target is malformed"})


class MigrateRequest(BaseModel):
    to: str = Field(min_length=3, max_length=600, description="ARCH/PRETRAINED[/SEED]")


async def _step(request: Request, step: Any, *args: Any) -> dict[str, Any]:
    svc = require_admin(request)
    try:
        return await run_in_threadpool(step, svc.settings, *args)  # type: ignore[no-any-return]
    except MigrationRefused as exc:
        raise HTTPException(409, str(exc)) from None


@router.get("/ops/model", responses=_RESPONSES)
async def model_status(request: Request) -> dict[str, Any]:
    """The active model, and the migration under way with every tenant's progress."""
    return await _step(request, model_ops.describe)


@router.post("/ops/model/migrations", status_code=202, responses=_RESPONSES)
async def migrate(request: Request, body: MigrateRequest) -> dict[str, Any]:
    """Deploy the target beside the current model and backfill it (the same target
    again resumes an unfinished backfill)."""
    from serve_apps.model_apps import parse_target

    svc = require_admin(request)
    try:
        target = parse_target(body.to, svc.settings)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return await _step(request, model_ops.start_remote, target)


@router.post("/ops/model/cutover", responses=_RESPONSES)
async def cutover(request: Request) -> dict[str, Any]:
    return await _step(request, model_ops.cutover)


@router.post("/ops/model/rollback", responses=_RESPONSES)
async def rollback(request: Request) -> dict[str, Any]:
    return await _step(request, model_ops.rollback)


@router.post("/ops/model/finish", responses=_RESPONSES)
async def finish(request: Request) -> dict[str, Any]:
    """After the grace period: end the migration, delete the other model's vectors."""
    return await _step(request, model_ops.finish)
