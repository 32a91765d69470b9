"""The page, its script, health and Prometheus metrics: the routes that are not the API's."""

from __future__ import annotations

import hmac
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response

from deeplens.auth import problems
from deeplens.settings import Settings
from ingestion import metrics

router = APIRouter()

WEB_PAGE = Path(__file__).parent / "web" / "index.html"
WEB_SCRIPT = Path(__file__).parent / "web" / "app.js"
# The page runs only its own script, talks only to this origin, is never framed.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@router.get("/", include_in_schema=False)
def web_page() -> Response:
    """The search page: static HTML + JS calling this same API with the user's key."""
    return Response(WEB_PAGE.read_bytes(), media_type="text/html", headers=PAGE_HEADERS)


@router.get("/app.js", include_in_schema=False)
def web_script() -> Response:
    return Response(WEB_SCRIPT.read_bytes(), media_type="text/javascript",
                    headers=PAGE_HEADERS)


@router.get("/healthz", tags=["ops"])
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", tags=["ops"], response_class=Response, responses={
    200: {"description": "Prometheus text exposition",
          "content": {"text/plain": {"schema": {"type": "string"}}}},
    **problems({403: "not the operator: no token, or not on this host"})})
def prometheus_metrics(request: Request) -> Response:
    """Fleet-wide figures for operators: with ``DEEPLENS_OPS__METRICS_TOKEN`` set, only
    for that bearer token; without it, only for clients on this host."""
    _require_operator(request, request.app.state.services.settings)
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


def operator_refusal(request: Request, settings: Settings) -> str | None:
    """Why this request is not the operator's (None if it is): with
    ``DEEPLENS_OPS__METRICS_TOKEN`` set, it must carry that bearer token; without it, it
    must come from this host."""
    token = settings.ops.metrics_token.get_secret_value()
    if token:
        given = request.headers.get("authorization", "").partition(" ")[2].strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return "metrics need the operator token (Authorization: Bearer)"
    elif (request.client.host if request.client else "") not in _LOOPBACK:
        return ("metrics are served to this host only; set DEEPLENS_OPS__METRICS_TOKEN to "
                "scrape from elsewhere")
    return None


def _require_operator(request: Request, settings: Settings) -> None:
    refusal = operator_refusal(request, settings)
    if refusal:
        raise HTTPException(403, refusal)
