"""API keys to tenants, and rate limits: shared by every HTTP route.

Authentication happens in an ASGI middleware, from the ``Authorization`` header,
before the request body is read: an unauthenticated upload costs its sender a
401, not the server 25 MB of buffering. The middleware also applies the
tenant's rate limit (separate budgets for writes and reads) and throttles failed
authentications per client address; routes read the tenant it resolved.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from deeplens.settings import Settings

Budget = Literal["read", "write"]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key: ``per_minute`` sustained, ``burst`` at once."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, now: float | None = None) -> float:
        """0.0 if allowed, else the seconds until a request would be."""
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.setdefault(key, _Bucket(self.burst, now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate

    def peek(self, key: str, now: float | None = None) -> float:
        """Like :meth:`acquire` without taking a token."""
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                return 0.0
            tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate


class AuthError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str]) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def budget_of(method: str, path: str) -> Budget:
    """Uploads and deletes spend the write budget; everything else, reads included
    (a search is a POST), the read budget."""
    if method == "DELETE" or (method == "POST" and path.rstrip("/") == "/v1/images"):
        return "write"
    return "read"


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class Authenticator:
    """Resolves ``Authorization: Bearer <key>`` to a tenant and applies its rate limits."""

    def __init__(self, settings: Settings) -> None:
        cfg = settings.ingestion
        self.keys = settings.tenant_keys()
        # Each Gateway replica keeps its own buckets, and Serve spreads requests evenly
        # over the replicas: each holds its share, so the tenant's total is the setting.
        share = settings.serve.gateway_replicas

        def limiter(per_minute: int, burst: int) -> RateLimiter:
            return RateLimiter(max(1, per_minute // share), max(1, burst // share))

        self.limiters = {
            "read": limiter(cfg.rate_limit_per_minute, cfg.rate_limit_burst),
            "write": limiter(cfg.upload_rate_limit_per_minute, cfg.upload_rate_limit_burst),
        }
        self.failures = limiter(cfg.failed_auth_per_minute, cfg.failed_auth_burst)

    def authenticate(self, authorization: str | None, client: str,
                     budget: Budget = "read") -> str:
        """The tenant of a header value, or AuthError (401, or 429 with Retry-After)."""
        wait_s = self.failures.peek(client)
        if wait_s > 0:  # this address failed too often: do not even look at its key
            raise AuthError(429, "too many failed authentications from this address",
                            _retry_after(wait_s))
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            self.failures.acquire(client)
            raise AuthError(401, "missing API key: send Authorization: Bearer <key>",
                            {"WWW-Authenticate": "Bearer"})
        tenant = self.keys.get(key.strip())
        if tenant is None:
            self.failures.acquire(client)
            raise AuthError(401, "unknown API key", {"WWW-Authenticate": "Bearer"})
        wait_s = self.limiters[budget].acquire(tenant)
        if wait_s > 0:
            raise AuthError(429, f"rate limit reached for tenant {tenant} ({budget}s)",
                            _retry_after(wait_s))
        return tenant


class AuthMiddleware:
    """Authenticates every ``/v1/`` request from its headers before the body is read."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.auth = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw = headers.get(b"authorization")
        client = (scope.get("client") or ("?", 0))[0]
        try:
            tenant = self.auth.authenticate(raw.decode("latin-1") if raw else None, client,
                                            budget_of(scope["method"], scope["path"]))
        except AuthError as exc:
            body = json.dumps({"detail": exc.detail}).encode()
            await send({"type": "http.response.start", "status": exc.status, "headers": [
                (b"content-type", b"application/json"), (b"connection", b"close"),
                *((k.lower().encode(), v.encode()) for k, v in exc.headers.items())]})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)


def current_tenant(request: Request) -> str:
    """The tenant comes from the API key only, never from anything else the client sends."""
    tenant = getattr(request.state, "tenant", None)
    if tenant is None:  # an app mounted without the middleware: authenticate here
        auth: Authenticator = request.app.state.auth
        client = request.client.host if request.client else "?"
        try:
            tenant = auth.authenticate(request.headers.get("authorization"), client,
                                       budget_of(request.method, request.url.path))
        except AuthError as exc:
            raise HTTPException(exc.status, exc.detail, headers=exc.headers) from None
    return tenant  # type: ignore[no-any-return]


TenantDep = Annotated[str, Depends(current_tenant)]


class ErrorBody(BaseModel):
    detail: str


AUTH_RESPONSES: dict[int | str, dict] = {
    401: {"model": ErrorBody, "description": "missing or unknown API key"},
    429: {"model": ErrorBody, "description": "rate limit reached; see Retry-After",
          "headers": {"Retry-After": {"schema": {"type": "integer"},
                                      "description": "seconds to wait"}}},
}
"""What every ``/v1/`` route may answer besides its own: pass as ``include_router``'s
``responses`` for a router of ``/v1/`` routes."""
