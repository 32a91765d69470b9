"""API keys to tenants, and a per-tenant rate limit: shared by every HTTP route."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from deeplens.settings import Settings


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per tenant: ``per_minute`` sustained, ``burst`` at once."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, tenant: str, now: float | None = None) -> float:
        """0.0 if allowed, else the seconds until a request would be."""
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.setdefault(tenant, _Bucket(self.burst, now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate


class Authenticator:
    """Resolves ``Authorization: Bearer <key>`` to a tenant and applies its rate limit."""

    def __init__(self, settings: Settings) -> None:
        self.keys = settings.tenant_keys()
        self.limiter = RateLimiter(settings.ingestion.rate_limit_per_minute,
                                   settings.ingestion.rate_limit_burst)

    def tenant(self, creds: HTTPAuthorizationCredentials | None) -> str:
        if creds is None or creds.scheme.lower() != "bearer":
            raise HTTPException(401, "missing API key: send Authorization: Bearer <key>",
                                headers={"WWW-Authenticate": "Bearer"})
        tenant = self.keys.get(creds.credentials)
        if tenant is None:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        wait_s = self.limiter.acquire(tenant)
        if wait_s > 0:
            raise HTTPException(429, f"rate limit reached for tenant {tenant}",
                                headers={"Retry-After": str(max(1, math.ceil(wait_s)))})
        return tenant


_bearer = HTTPBearer(auto_error=False)


def current_tenant(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The tenant comes from the API key only, never from anything else the client sends."""
    auth: Authenticator = request.app.state.auth
    return auth.tenant(creds)


TenantDep = Annotated[str, Depends(current_tenant)]
