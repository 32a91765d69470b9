"""One validated settings object for every DeepLens process.

Read from ``DEEPLENS_*`` environment variables (nested groups with ``__``), e.g.
``DEEPLENS_KAFKA__BOOTSTRAP_SERVERS=broker:9092``. A bad value fails at start
with a message naming the variable (see :func:`load_settings`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deeplens.api_keys import parse_api_keys
from deeplens.import_settings import ImportSettings
from deeplens.kafka_settings import KafkaSettings
from deeplens.migration_settings import MigrationSettings
from deeplens.scaling_settings import ScalingSettings

ENV_PREFIX = "DEEPLENS_"


class SettingsError(ValueError):
    """Raised when the environment holds a value DeepLens cannot start with."""


class StorageSettings(BaseModel):
    """Where uploaded bytes live: a local folder (default) or an S3-compatible bucket."""

    provider: Literal["local", "s3"] = "local"
    root: Path | None = Field(None, description="Local root; default DATA_DIR/images")
    s3_bucket: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")


class VectorStoreSettings(BaseModel):
    """Which vector database holds the embeddings."""

    backend: Literal["lancedb", "weaviate"] = "lancedb"
    weaviate_url: str = "http://127.0.0.1:8080"
    weaviate_grpc_port: int = 50051
    weaviate_api_key: SecretStr = SecretStr("")
    weaviate_timeout_s: float = Field(30.0, gt=0)
    ann_min_rows: int = Field(
        0, ge=0, description="LanceDB: build its own IVF_HNSW_SQ index past this many rows "
        "(0: never; searches go through the in-memory index of deeplens/vectors/memory.py, and "
        "building it would stall the indexer that crosses the threshold for minutes)")
    ann_nprobes: int = Field(32, ge=1, description="LanceDB: IVF partitions probed per query")
    memory_max_mb: int = Field(
        0, ge=0, description="In-memory search index of a process (the Gateway): past this "
        "many MiB the least recently searched tenants are dropped and reloaded on demand "
        "(0: no bound; ~2.5 KB per 512-d image, benchmarks/scale_bench.py)")
    lance_metadata_cache_mb: int = Field(64, ge=1, description="LanceDB's metadata cache per "
        "process (LanceDB's default, 1 GiB, fills with a manifest per table version read)")
    lance_index_cache_mb: int = Field(256, ge=1, description="LanceDB's index cache per process "
        "(the id and tenant BTREEs; LanceDB's default is 6 GiB)")


class ModelSettings(BaseModel):
    """Which open_clip model embeds images and text."""

    name: str = "ViT-B-32"
    pretrained: str = Field(
        "laion2b_s34b_b79k", description="open_clip tag, a weights file path, or 'random'"
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    random_seed: int = Field(
        0, ge=0, description="Seed of random weights (pretrained=random); part of the model id")
    allow_download: bool = Field(
        False, description="Let open_clip fetch weights from the hub (off: cache and files only)")


class ServeSettings(BaseModel):
    """Ray Serve: HTTP edge and the Embedder deployment."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    replicas: int = Field(1, ge=1, description="Embedder replicas (the minimum when autoscaling)")
    autoscale_max_replicas: int = Field(0, ge=0, description="> replicas turns autoscaling on")
    num_gpus: float = Field(0.0, ge=0)
    num_cpus: float = Field(0.5, gt=0)
    max_batch_size: int = Field(32, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    max_ongoing_requests: int = Field(256, ge=1)
    resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources each Embedder replica asks for "
        '(JSON), e.g. \'{"embedder": 1}\' to pin replicas to chosen nodes')
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode", description="Where Serve runs its HTTP proxy (HeadOnly when several Ray "
        "nodes share one machine, or behind one load balancer address)")
    gateway_replicas: int = Field(
        1, ge=1, description="Gateway (HTTP edge) replicas; rate limits are divided among them")
    gateway_resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources each Gateway replica asks for "
        "(JSON): keep the HTTP edge off nodes that may go away, e.g. '{\"head_node\": 1}'")
    query_timeout_s: float = Field(
        5.0, gt=0, description="How long a search waits for the Embedder to encode its query "
        "before answering 503 with Retry-After (no replica: its node is gone)")
    torch_threads: int = Field(
        0, ge=0, description="CPU threads for torch in a replica; 0 = every core of the node "
        "(Ray would otherwise pin it to its fractional CPU request, i.e. one thread)")
    decoder: Literal["auto", "dali", "torch", "cpu", "pillow"] = Field(
        "auto", description="Embedder decoder; auto: on a GPU DALI mixed, else torchvision's "
        "nvJPEG, else (only with allow_cpu_decode) the CPU pool; on a CPU the CPU pool")
    allow_cpu_decode: bool = Field(
        False, description="Let a GPU replica decode on its host instead of refusing to start")
    decode_threads: int = Field(
        0, ge=0, description="Decoder threads per replica; 0 = every core it may run on")


class ActorSettings(BaseModel):
    """How many consumer actors each stage runs and what each asks of Ray."""

    validators: int = Field(1, ge=1)
    projectors: int = Field(1, ge=1)
    feeders: int = Field(1, ge=1, description="Embedding feeders (at most one per partition "
                         "of images.validated)")
    indexers: int = Field(1, ge=1)
    dedupers: int = Field(1, ge=1)
    feeder_batches_in_flight: int = Field(
        2, ge=1, description="Batches each feeder keeps at the Embedder before pausing")
    store_batches_in_flight: int = Field(
        2, ge=1, description="Batches the projection and usage actors write at once: one "
        "is fetched while another is written (with 1, each batch waits for the next fetch; "
        "ceiling_bench, one run each: 43.7 -> 52.7 images/s end to end)")
    num_cpus: float = Field(
        0.1, gt=0, description="Ray CPU request per consumer actor (a scheduling share, not a "
        "limit). Six stages plus the Embedder must fit a 2-core laptop; raise it on a cluster")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources each consumer actor asks for, "
        'as JSON: \'{"cpu_pool": 0.01}\' places the stages on nodes started with that resource')


class IngestionSettings(BaseModel):
    """Limits at the HTTP edge and in validation."""

    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1)
    rate_limit_per_minute: int = Field(
        1200, ge=1, description="Reads per tenant per minute: searches, listings, statuses "
        "(a bulk statuses call counts once)")
    rate_limit_burst: int = Field(120, ge=1, description="Reads at once")
    upload_rate_limit_per_minute: int = Field(
        6000, ge=1, description="Writes (uploads, deletes) per tenant per minute: 100/s")
    upload_rate_limit_burst: int = Field(300, ge=1, description="Writes at once")
    failed_auth_per_minute: int = Field(
        30, ge=1, description="Failed authentications per client address per minute before "
        "that address is answered 429")
    failed_auth_burst: int = Field(10, ge=1)
    rate_limit_max_keys: int = Field(100_000, ge=1, description="Rate-limit buckets kept "
                                     "per budget and replica; the least recently used go")
    max_image_pixels: int = Field(89_478_485, ge=1, description="Pillow's bomb threshold")
    min_side: int = Field(16, ge=1)
    max_side: int = Field(16_384, ge=1)
    ack_timeout_s: float = Field(10.0, gt=0, description="Broker ack wait before answering 503")


class OpsSettings(BaseModel):
    """Operator-facing endpoints."""

    metrics_token: SecretStr = Field(
        SecretStr(""), description="Bearer token /metrics requires; empty: /metrics answers "
        "loopback clients only")
    admin_token: SecretStr = Field(
        SecretStr(""), description="Bearer token of the admin routes (/ops/imports); empty: "
        "they are refused. Never a tenant's key")
    docs: bool = Field(False, description="Serve the Swagger UI at /docs (its assets come "
                       "from a public CDN); /openapi.json is always served")
    stuck_after_s: float = Field(
        600, gt=0, description="An image that has not moved for this long, while the stage "
        "that should move it has caught up, is re-published by the periodic sweep")
    sweep_interval_s: float = Field(
        60, ge=0, description="How often the stuck-image sweep runs; 0 turns it off")
    stage_down_after_s: float = Field(
        30, ge=0, description="A stage with no live actor this long makes /readyz degraded")


class DedupThresholds(BaseModel):
    """Where a match counts as a duplicate (defaults measured by benchmarks/dedup_bench.py)."""

    near_max_distance: int = Field(10, ge=0, le=32, description="pHash Hamming distance, "
                                   "whole image against whole image")
    near_window_max_distance: int = Field(
        12, ge=-1, le=32, description="pHash Hamming distance between one image whole and a "
        "window of the other (crops, small rotations); -1 turns the windowed match off")
    similar_min_score: float = Field(0.92, ge=0, le=1, description="cosine similarity")
    max_matches: int = Field(
        20, ge=1, le=1000, description="Matches kept per image, strongest first: bounds what "
        "one image of a very uniform collection costs the projection")
    similar_k: int = Field(10, ge=1, le=100)


class DedupSettings(DedupThresholds):
    """Default thresholds, and per-tenant overrides as JSON:
    DEEPLENS_DEDUP__TENANTS='{"acme": {"near_max_distance": 6}}'."""

    tenants: dict[str, DedupThresholds] = Field(default_factory=dict)
    cache_max_mb: int = Field(
        0, ge=0, description="Near-duplicate hash cache of a dedup actor: past this many MiB "
        "the least recently used tenants are dropped and reloaded on demand (0: no bound; "
        "~420 bytes per stored image, benchmarks/scale_bench.py)")

    def for_tenant(self, tenant_id: str) -> DedupThresholds:
        """Every default setting, the tenant's overrides (the fields its JSON names) on top."""
        merged = {name: getattr(self, name) for name in DedupThresholds.model_fields}
        own = self.tenants.get(tenant_id)
        if own is not None:
            merged.update({name: getattr(own, name) for name in own.model_fields_set})
        return DedupThresholds(**merged)


class Settings(BaseSettings):
    """Every DeepLens setting. Build with :func:`load_settings` to get readable errors."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    data_dir: Path = Path("data")
    api_keys: SecretStr = Field(
        SecretStr(""), description="tenant:key pairs, comma separated: alpha:key-a,beta:key-b"
    )
    api_keys_file: Path | None = Field(None, description="File of tenant:key lines")
    catalog_url: str = Field("", description="SQLAlchemy URL; empty = SQLite in DATA_DIR")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    ray_address: str = Field("", description="Ray cluster to join ('auto' on a ray up head); "
                             "empty starts a local Ray")
    ray_object_store_mb: int = Field(
        256, ge=80, description="Object store of a local Ray (Ray's own default is 30 % of RAM)")

    kafka: KafkaSettings = KafkaSettings()
    storage: StorageSettings = StorageSettings()
    vector_store: VectorStoreSettings = VectorStoreSettings()
    model: ModelSettings = ModelSettings()
    serve: ServeSettings = ServeSettings()
    actors: ActorSettings = ActorSettings()
    ingestion: IngestionSettings = IngestionSettings()
    dedup: DedupSettings = DedupSettings()
    ops: OpsSettings = OpsSettings()
    scaling: ScalingSettings = ScalingSettings()
    imports: ImportSettings = ImportSettings()
    migration: MigrationSettings = MigrationSettings()

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: SecretStr) -> SecretStr:
        parse_api_keys(value.get_secret_value())
        return value

    def tenant_keys(self) -> dict[str, str]:
        """Map of API key -> tenant id, from API_KEYS and API_KEYS_FILE."""
        keys = parse_api_keys(self.api_keys.get_secret_value())
        if self.api_keys_file is not None:
            text = self.api_keys_file.read_text()
            lines = [ln.strip() for ln in text.splitlines()]
            keys.update(parse_api_keys(",".join(ln for ln in lines if ln and ln[0] != "#")))
        return keys

    @property
    def storage_root(self) -> Path:
        return self.storage.root or self.data_dir / "images"

    @property
    def effective_catalog_url(self) -> str:
        return self.catalog_url or f"sqlite:///{(self.data_dir / 'catalog.db').resolve()}"

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets replaced by '***'."""
        return _mask(self.model_dump(mode="python"))


def _mask(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "***" if value.get_secret_value() else ""
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment; raise SettingsError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            var = ENV_PREFIX + "__".join(str(p).upper() for p in err["loc"])
            shown = "<secret>" if "KEY" in var or "PASSWORD" in var else os.environ.get(var)
            lines.append(f"{var}={shown!r}: {err['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
