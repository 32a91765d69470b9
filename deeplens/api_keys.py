"""API keys as configured: ``DEEPLENS_API_KEYS=tenant:key,tenant:key``."""

from __future__ import annotations

MIN_API_KEY_LENGTH = 16


def parse_api_keys(text: str) -> dict[str, str]:
    """Parse ``tenant:key,tenant:key`` into {key: tenant}; reject malformed pairs."""
    keys: dict[str, str] = {}
    for raw in text.split(","):
        pair = raw.strip()
        if not pair:
            continue
        tenant, sep, key = pair.partition(":")
        tenant, key = tenant.strip(), key.strip()
        if not sep or not tenant or not key:
            raise ValueError(f"expected tenant:key, got {pair.split(':')[0]!r}:<...>")
        if not _TENANT_OK(tenant):
            raise ValueError(f"tenant id {tenant!r} may hold only letters, digits, '-', '_'")
        if len(key) < MIN_API_KEY_LENGTH:  # never echo the key itself
            raise ValueError(f"the API key of tenant {tenant!r} is shorter than "
                             f"{MIN_API_KEY_LENGTH} characters")
        if key in keys and keys[key] != tenant:
            raise ValueError("one API key is given to two tenants")
        keys[key] = tenant
    return keys


def _TENANT_OK(tenant: str) -> bool:  # noqa: N802 - reads as a predicate constant
    return len(tenant) <= 64 and all(c.isalnum() or c in "-_" for c in tenant)
