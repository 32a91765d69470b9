"""What the local stack checks and prepares before it starts anything: node-local
state on a multi-node Ray, the demo key, the folder Ray's workers import from, the
Embedder's own start-up error."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import SecretStr

from deeplens.settings import Settings

DEMO_TENANT = "demo"


class StackError(RuntimeError):
    """A part of the stack did not start; the message says which and why."""


def shared_state_problems(settings: Settings, nodes: int) -> list[str]:
    """What keeps a stack of ``nodes`` Ray nodes from sharing its state, as settings to
    change; nothing on a single node. Called before the local broker would start, so no
    ``KAFKA__BOOTSTRAP_SERVERS`` means a broker on this node's loopback."""
    if nodes <= 1:
        return []
    problems = []
    if not settings.kafka.bootstrap_servers:
        problems.append("no broker is configured, so a local one would start on this node's "
                        "127.0.0.1: set DEEPLENS_KAFKA__BOOTSTRAP_SERVERS to a Kafka every "
                        "node reaches")
    if settings.effective_catalog_url.startswith("sqlite"):
        problems.append("the catalog is a SQLite file on this node: set DEEPLENS_CATALOG_URL "
                        "to a shared database (postgresql+psycopg://...)")
    if settings.storage.provider == "local":
        problems.append("uploaded bytes are stored in a local folder: set "
                        "DEEPLENS_STORAGE__PROVIDER=s3 and DEEPLENS_STORAGE__S3_BUCKET (and "
                        "S3_ENDPOINT_URL for a non-AWS store)")
    if settings.vector_store.backend == "lancedb":
        problems.append("vectors are in an embedded LanceDB folder on this node: set "
                        "DEEPLENS_VECTOR_STORE__BACKEND=weaviate and WEAVIATE_URL")
    return problems


def deployment_error(exc: BaseException) -> str:
    """The replica's own start-up error (Serve keeps it in the deployment status)."""
    from ray import serve

    text = str(exc)
    try:
        for app in serve.status().applications.values():
            for deployment in app.deployments.values():
                text += "\n" + (deployment.message or "")
    except Exception:  # noqa: BLE001 - fall back to the exception text
        pass
    marker = "ModelLoadError: "
    if marker in text:
        return text[text.index(marker) + len(marker):].split("\n")[0]
    return text.strip().splitlines()[-1] if text.strip() else type(exc).__name__


def ensure_demo_key(settings: Settings) -> tuple[Settings, str | None]:
    """With no API keys configured, a ``demo`` tenant with a key kept in the data dir."""
    if settings.tenant_keys():
        return settings, None
    key_file: Path = settings.data_dir / "demo-api-key"
    if not key_file.exists():
        # Created 0600 from the first byte: no moment where another user could read it.
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"dl-{secrets.token_urlsafe(24)}\n")
    key = key_file.read_text().strip()
    return settings.model_copy(update={"api_keys": SecretStr(f"{DEMO_TENANT}:{key}")}), key




@contextmanager
def from_project_root() -> Iterator[None]:
    """Run the block with the project's install folder as working directory.

    Ray puts the driver's working directory first on every worker's ``sys.path``: a
    stray ``actors.py`` where ``deeplens up`` was started would hide the ``actors``
    package, and every stage actor restarted later would die in its constructor. So
    ``ray.init`` runs from the folder DeepLens's own packages are imported from."""
    import deeplens

    launched = os.getcwd()
    os.chdir(Path(deeplens.__file__).resolve().parent.parent)
    try:
        yield
    finally:
        os.chdir(launched)
