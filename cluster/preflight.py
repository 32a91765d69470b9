"""Before ``deeplens up`` starts anything: is every external service it was pointed at
there? One line per failure names the service, what went wrong and the setting to fix.

Without this, an unreachable Weaviate surfaced 30 s later as ``Deploying application
gateway failed`` with the cause only in the Serve controller's log.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from urllib.parse import urlparse

from deeplens.settings import Settings

TIMEOUT_S = 5.0


class ServiceUnreachable(RuntimeError):
    """An external service did not answer; the message is one line for the operator."""


def _tcp(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=TIMEOUT_S):
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def check_broker(settings: Settings) -> None:
    servers = [s.strip() for s in settings.kafka.bootstrap_servers.split(",") if s.strip()]
    errors = []
    for server in servers:
        host, _, port = server.rpartition(":")
        try:
            _tcp(host.strip("[]") or "127.0.0.1", int(port or 9092))
            return
        except (OSError, ValueError) as exc:
            errors.append(f"{server}: {_first_line(exc)}")
    raise ServiceUnreachable(
        f"the broker (Kafka) does not answer ({'; '.join(errors)}): start it, or set "
        "DEEPLENS_KAFKA__BOOTSTRAP_SERVERS to a broker this node reaches")


def check_catalog(settings: Settings) -> None:
    import sqlalchemy as sa

    url = settings.catalog_url
    shown = sa.make_url(url).render_as_string(hide_password=True)
    args = {"connect_timeout": int(TIMEOUT_S)} if url.startswith("postgresql") else {}
    engine = sa.create_engine(url, connect_args=args, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - refused, auth, no such database: all one line
        raise ServiceUnreachable(
            f"the catalog database {shown} does not answer ({_first_line(exc)}): start it, "
            "or fix DEEPLENS_CATALOG_URL") from None
    finally:
        engine.dispose()


def check_storage(settings: Settings) -> None:
    import boto3
    from botocore.config import Config

    cfg = settings.storage
    where = f"s3://{cfg.s3_bucket}" + (f" at {cfg.s3_endpoint_url}" if cfg.s3_endpoint_url
                                        else "")
    client = boto3.client(
        "s3", endpoint_url=cfg.s3_endpoint_url or None, region_name=cfg.s3_region or None,
        aws_access_key_id=cfg.s3_access_key_id or None,
        aws_secret_access_key=cfg.s3_secret_access_key.get_secret_value() or None,
        config=Config(connect_timeout=TIMEOUT_S, read_timeout=TIMEOUT_S,
                      retries={"max_attempts": 1}))
    try:
        client.head_bucket(Bucket=cfg.s3_bucket)
    except Exception as exc:  # noqa: BLE001 - no connection, 403, no such bucket
        raise ServiceUnreachable(
            f"the object store {where} does not answer ({_first_line(exc)}): check "
            "DEEPLENS_STORAGE__S3_BUCKET, S3_ENDPOINT_URL and the S3 credentials") from None


def check_vector_store(settings: Settings) -> None:
    import httpx

    cfg = settings.vector_store
    url = urlparse(cfg.weaviate_url)
    try:
        answer = httpx.get(cfg.weaviate_url.rstrip("/") + "/v1/.well-known/ready",
                           timeout=TIMEOUT_S)
        if answer.status_code >= 500:
            raise ServiceUnreachable(f"answered {answer.status_code}")
        _tcp(url.hostname or "127.0.0.1", cfg.weaviate_grpc_port)
    except (OSError, httpx.HTTPError, ServiceUnreachable) as exc:
        raise ServiceUnreachable(
            f"the vector store (Weaviate) at {cfg.weaviate_url}, gRPC port "
            f"{cfg.weaviate_grpc_port}, does not answer ({_first_line(exc)}): start it, or "
            "set DEEPLENS_VECTOR_STORE__WEAVIATE_URL and WEAVIATE_GRPC_PORT") from None


def checks_for(settings: Settings) -> list[tuple[str, Callable[[Settings], None]]]:
    """The external services these settings point at (embedded defaults have none)."""
    checks: list[tuple[str, Callable[[Settings], None]]] = []
    if settings.kafka.bootstrap_servers:
        checks.append(("broker", check_broker))
    if settings.catalog_url:
        checks.append(("catalog", check_catalog))
    if settings.storage.provider == "s3":
        checks.append(("storage", check_storage))
    if settings.vector_store.backend == "weaviate":
        checks.append(("vector store", check_vector_store))
    return checks


def preflight(settings: Settings) -> list[str]:
    """One line for each external service that does not answer; empty when all do."""
    problems = []
    for _name, check in checks_for(settings):
        try:
            check(settings)
        except ServiceUnreachable as exc:
            problems.append(str(exc))
    return problems
