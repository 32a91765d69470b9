"""API keys to tenants, and rate limits: shared by every HTTP route.

Authentication happens in an ASGI middleware, from the ``Authorization`` header,
before the request body is read: an unauthenticated upload costs its sender a
401, not the server 25 MB of buffering. The middleware also applies the
tenant's rate limit (separate budgets for writes and reads) and throttles failed
authentications per client address; routes read the tenant it resolved.

The key is checked first: a valid key spends only its tenant's budget, so a client
sending bad keys from behind the same NAT or load balancer never locks the others out.
Every budget keeps its buckets in a bounded LRU, so addresses a client makes up cost
at most ``rate_limit_max_keys`` buckets.
"""

from __future__ import annotations

import ipaddress
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from deeplens.settings import Settings

Budget = Literal["read", "write"]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key: ``per_minute`` sustained, ``burst`` at once.

    At most ``max_keys`` buckets are kept; past that the least recently used goes. A key
    that comes back after its bucket went starts full, as a new key would: the bound
    costs no more than one more address would."""

    def __init__(self, per_minute: int, burst: int, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str, now: float | None = None) -> float:
        """0.0 if allowed, else the seconds until a request would be."""
        now = self.clock() if now is None else now
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(self.burst, now)
                if len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0 - 1e-9:  # a request exactly on time is not refused
                bucket.tokens -= 1.0          # for the rounding of its refill
                return 0.0
            return (1.0 - bucket.tokens) / self.rate


class AuthError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str]) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def budget_of(method: str, path: str) -> Budget:
    """Uploads and deletes spend the write budget; everything else, reads included
    (a search is a POST), the read budget."""
    if method == "DELETE" or (method == "POST" and path.rstrip("/") in ("/v1/images",
                                                                         "/v1/images/batch")):
        return "write"
    return "read"


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def address_key(client: str) -> str:
    """The failure throttle's key for a client address: an IPv6 address by its /64, the
    block one subscriber gets, so a client cannot make up a fresh address per guess."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Authenticator:
    """Resolves ``Authorization: Bearer <key>`` to a tenant and applies its rate limits."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        cfg = settings.ingestion
        self.keys = settings.tenant_keys()
        self.clock = clock
        # Each Gateway replica keeps its own buckets, and Serve spreads requests evenly
        # over the replicas: each holds its share, so the tenant's total is the setting.
        share = settings.serve.gateway_replicas

        def limiter(per_minute: int, burst: int) -> RateLimiter:
            return RateLimiter(max(1, per_minute // share), max(1, burst // share),
                               max_keys=cfg.rate_limit_max_keys, clock=self.now)

        self.limiters = {
            "read": limiter(cfg.rate_limit_per_minute, cfg.rate_limit_burst),
            "write": limiter(cfg.upload_rate_limit_per_minute, cfg.upload_rate_limit_burst),
        }
        self.failures = limiter(cfg.failed_auth_per_minute, cfg.failed_auth_burst)

    def now(self) -> float:
        return self.clock()

    def authenticate(self, authorization: str | None, client: str,
                     budget: Budget = "read") -> str:
        """The tenant of a header value, or AuthError (401, or 429 with Retry-After).

        The key is looked at first: a valid key is never held back by failures from its
        address, which may be a NAT or a load balancer shared with a client guessing."""
        scheme, _, key = (authorization or "").partition(" ")
        tenant = self.keys.get(key.strip()) if scheme.lower() == "bearer" else None
        if tenant is None:
            wait_s = self.failures.acquire(address_key(client))
            if wait_s > 0:
                raise AuthError(429, "too many failed authentications from this address",
                                _retry_after(wait_s))
            if scheme.lower() != "bearer" or not key.strip():
                raise AuthError(401, "missing API key: send Authorization: Bearer <key>",
                                {"WWW-Authenticate": "Bearer"})
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


# Declares the scheme in the OpenAPI document; the key itself is checked above.
_BEARER = HTTPBearer(auto_error=False, description="the tenant's API key")


def current_tenant(request: Request,
                   _key: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]
                   ) -> str:
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
    """What every error answer of the API holds, whatever its status: one plain sentence."""

    detail: str


def problems(described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, each with the one error body."""
    return {status: {"model": ErrorBody, "description": text}
            for status, text in described.items()}


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = problems({
    401: "missing or unknown API key",
    429: "rate limit reached; see Retry-After",
})
AUTH_RESPONSES[429]["headers"] = {"Retry-After": {"schema": {"type": "integer"},
                                                  "description": "seconds to wait"}}
"""What every ``/v1/`` route may answer besides its own: pass as ``include_router``'s
``responses`` for a router of ``/v1/`` routes."""

PARAM_RESPONSES = problems({422: "a path or query parameter is out of its range"})
"""What a route with path or query parameters may answer besides its own."""

BODY_RESPONSES = problems({
    400: "the body is not well-formed (JSON or multipart)",
    413: "the body is over the size limit",
    422: "a field of the body is missing or out of its range",
})
"""What a route that reads a request body may answer besides its own."""

IMAGE_PART = {"requestBody": {"content": {"multipart/form-data": {"encoding": {
    "file": {"contentType": "image/jpeg, image/png, image/webp"}}}}}}
"""``openapi_extra`` of a route whose ``file`` part is an image: what the bytes must be,
which a JSON schema of ``format: binary`` cannot say."""
