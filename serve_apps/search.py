"""The search routes: text -> images, image -> images, similar to an image.

Mounted on the same FastAPI app (and port) as the upload routes, with the same
auth. Queries are encoded by the Embedder deployment and answered from the
caller's tenant only, in the active model's collection.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Annotated, Any

import numpy as np
from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
)
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from deeplens.auth import (
    AUTH_RESPONSES,
    BODY_RESPONSES,
    IMAGE_PART,
    PARAM_RESPONSES,
    TenantDep,
    problems,
)
from deeplens.image_checks import HTTP_STATUS, Invalid, check_header
from deeplens.settings import IngestionSettings
from deeplens.vectors.base import Hit, VectorStore, is_random_init
from serve_apps.query_encoder import (  # noqa: F401 - re-exported for existing callers
    EmbedderUnavailable,
    HandleEncoder,
    QueryEncoder,
    QueryError,
)

log = logging.getLogger(__name__)

MAX_QUERY_IMAGE_BYTES = 10 * 1024 * 1024


class TextQuery(BaseModel):
    text: str = Field(min_length=1, max_length=1000)
    k: int = Field(10, ge=1, le=100)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text must not be blank")
        return value.strip()


class SearchHit(BaseModel):
    image_id: str
    score: float
    original_file_name: str
    uploaded_at: datetime | None


class ModelInfo(BaseModel):
    model: str = Field(description="the id every vector of the active model carries")
    random_weights: bool = Field(description="random weights: scores mean nothing")
    reindexing: dict[str, Any] | None = Field(
        None, description="a model change under way: its state, target and this tenant's "
        "progress (percent, done, left, rate, ETA); searches stay on `model` until cutover")


class SearchResult(BaseModel):
    model: str
    hits: list[SearchHit]


class SearchContext:
    def __init__(self, store: VectorStore, encoder: QueryEncoder,
                 meter: Any = None, limits: IngestionSettings | None = None) -> None:
        self.store = store
        self.encoder = encoder
        self.meter = meter  # async (tenant) -> None: meters one search; optional
        self.limits = limits or IngestionSettings()  # query images pass the upload checks

    async def search(self, model: str, tenant: str, vector: np.ndarray, k: int,
                     exclude: frozenset[str] = frozenset(),
                     timing: dict[str, float] | None = None) -> list[Hit]:
        """The store is synchronous: keep it off the event loop."""
        started = time.perf_counter()
        hits = await run_in_threadpool(self.store.search, model, tenant, vector, k, exclude)
        if timing is not None:
            timing["index"] = (time.perf_counter() - started) * 1000
        return hits  # type: ignore[no-any-return]

    async def pin(self) -> tuple[str, QueryEncoder]:
        """The model a query runs on and its encoder, together (``ActiveModelEncoder``)."""
        pin = getattr(self.encoder, "pin", None)
        if pin is not None:
            return await pin()  # type: ignore[no-any-return]
        return await self.encoder.model_id(), self.encoder

    async def metered(self, tenant: str, result: SearchResult) -> SearchResult:
        if self.meter is not None:
            await self.meter(tenant)
        return result


def server_timing(response: Response, timing: dict[str, float]) -> None:
    """Where a search's time went (Embedder, index), as a standard Server-Timing header."""
    response.headers["Server-Timing"] = ", ".join(
        f"{name};dur={ms:.2f}" for name, ms in timing.items())


class _Stopwatch:
    def __init__(self, timing: dict[str, float], name: str) -> None:
        self.timing, self.name = timing, name

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timing[self.name] = (time.perf_counter() - self.started) * 1000


def search_context(request: Request) -> SearchContext:
    return request.app.state.search  # type: ignore[no-any-return]


SearchDep = Annotated[SearchContext, Depends(search_context)]


def _result(model: str, hits: list[Hit]) -> SearchResult:
    return SearchResult(model=model, hits=[
        SearchHit(image_id=h.image_id, score=round(h.score, 6),
                  original_file_name=h.original_file_name, uploaded_at=h.uploaded_at)
        for h in hits])


router = APIRouter(prefix="/v1", tags=["search"])


@router.get("/model", response_model=ModelInfo)
async def active_model(tenant: TenantDep, ctx: SearchDep) -> ModelInfo:
    """The model search runs on (the search page warns when its weights are random)."""
    model = await ctx.encoder.model_id()
    reindexing = getattr(ctx.encoder, "reindexing", None)
    return ModelInfo(model=model, random_weights=is_random_init(model),
                     reindexing=await reindexing(tenant) if reindexing else None)


@router.post("/search", response_model=SearchResult, responses=BODY_RESPONSES)
async def search_text(query: TextQuery, tenant: TenantDep, ctx: SearchDep,
                      response: Response) -> SearchResult:
    timing: dict[str, float] = {}
    with _Stopwatch(timing, "embed"):
        model, encoder = await ctx.pin()
        vector = await encoder.text(query.text)
    hits = await ctx.search(model, tenant, vector, query.k, timing=timing)
    server_timing(response, timing)
    return await ctx.metered(tenant, _result(model, hits))


@router.post("/search/image", response_model=SearchResult, openapi_extra=IMAGE_PART,
             responses=BODY_RESPONSES | problems({
    413: "over 10 MB, or a bomb by its header",
    415: "not JPEG, PNG or WebP by its bytes",
    422: "too small, or undecodable, or a field out of its range"}))
async def search_image(tenant: TenantDep, ctx: SearchDep, response: Response,
                       file: Annotated[UploadFile, File(description="the query image",
                                                        json_schema_extra={"minLength": 1})],
                       k: Annotated[int, Form(ge=1, le=100)] = 10) -> SearchResult:
    data = await file.read(MAX_QUERY_IMAGE_BYTES + 1)
    if len(data) > MAX_QUERY_IMAGE_BYTES:
        raise HTTPException(413, "query image is larger than 10 MB")
    # The same refusals as an upload, from the header alone, before any decoder runs.
    verdict = await run_in_threadpool(check_header, data, ctx.limits)
    if isinstance(verdict, Invalid):
        raise HTTPException(HTTP_STATUS.get(verdict.reason, 422),
                            f"query image refused ({verdict.reason}): {verdict.message}")
    timing: dict[str, float] = {}
    with _Stopwatch(timing, "embed"):
        model, encoder = await ctx.pin()
        try:
            vector = await encoder.image(data)
        except QueryError as exc:
            raise HTTPException(422, f"query image could not be decoded: {exc}") from exc
    hits = await ctx.search(model, tenant, vector, k, timing=timing)
    server_timing(response, timing)
    return await ctx.metered(tenant, _result(model, hits))


@router.get("/images/{image_id}/similar", response_model=SearchResult,
            responses=PARAM_RESPONSES | problems({404: "not in this tenant's index"}))
async def similar(image_id: str, tenant: TenantDep, ctx: SearchDep,
                  k: Annotated[int, Query(ge=1, le=100)] = 10) -> SearchResult:
    model = await ctx.encoder.model_id()
    vector = await run_in_threadpool(ctx.store.get_vector, model, tenant, image_id)
    if vector is None:  # missing, another tenant's, or not indexed yet: all read alike
        raise HTTPException(404, "image not found in the search index")
    return await ctx.metered(tenant, _result(model, await ctx.search(
        model, tenant, vector, k, exclude=frozenset({image_id}))))


def search_meter(producer: Any) -> Any:
    """Meters each search as a ``tenant.usage`` event (acknowledged before answering)."""
    from starlette.concurrency import run_in_threadpool

    from deeplens.stage_sdk import usage_event

    async def meter(tenant: str) -> None:
        try:
            await run_in_threadpool(producer.send, [usage_event(tenant, "searches", 1)])
        except Exception as exc:  # noqa: BLE001 - a metering hiccup must not fail the search
            log.warning("search not metered: %s", exc)

    return meter


def mount_search(app: Any, store: VectorStore, encoder: QueryEncoder,
                 producer: Any = None) -> None:
    """Add the search routes to an app whose ``state.auth`` is set (the upload app)."""
    services = getattr(app.state, "services", None)
    limits = services.settings.ingestion if services is not None else None
    app.state.search = SearchContext(store, encoder,
                                     search_meter(producer) if producer is not None else None,
                                     limits=limits)
    app.add_exception_handler(EmbedderUnavailable, _embedder_unavailable)
    app.include_router(router, responses=AUTH_RESPONSES | UNAVAILABLE)
    app.openapi_schema = None


UNAVAILABLE = problems({503: "no Embedder replica answered in time (see /readyz); "
                             "retry after the Retry-After seconds"})


async def _embedder_unavailable(request: Request, exc: Exception) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": f"search is unavailable: {exc}"}, status_code=503,
                        headers={"Retry-After": "5"})
