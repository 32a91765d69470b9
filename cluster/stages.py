"""The stage table: every consumer stage DeepLens runs, declared once.

One row per stage: its handler, the topics it reads and writes, whether it has a
retry ladder (``topics.toml`` ``[retries]``), the actor-count setting that scales it,
and the Serve app or store it uses. ``deeplens up`` (``stage_specs``), the metrics,
the CLI's ``--stage`` choices and the README's stage table follow from it; a test
checks each handler module and ``topics.toml`` against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from deeplens.settings import Settings
from deeplens.stage_actor import StageSpec


@dataclass(frozen=True)
class StageDef:
    name: str  # a Stage literal; also the consumer group's name
    handler: str  # "module:function" taking Settings, returning a batch handler
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    retries: bool  # has a retry ladder <name>.retry.1..3
    count: str | None  # the ActorSettings field with its actor count; None: one actor
    uses: str  # the Serve app or store it talks to
    in_flight: str | None = None  # the ActorSettings field with its batches in flight

    def actors(self, settings: Settings) -> int:
        return getattr(settings.actors, self.count) if self.count else 1

    def spec(self, settings: Settings) -> StageSpec:
        in_flight = getattr(settings.actors, self.in_flight) if self.in_flight else 1
        return StageSpec(self.name, self.inputs, self.handler, max_in_flight=in_flight)


_FAILED = "images.failed"
STAGES: tuple[StageDef, ...] = (
    StageDef("validation", "actors.validator:build_handler",
             ("images.uploaded", "images.uploaded.bulk"),
             ("images.validated", "images.validated.bulk", _FAILED, "tenant.usage"), True,
             "validators", "storage"),
    StageDef("embedding", "actors.embedding_feeder:build_handler",
             ("images.validated", "images.validated.bulk"),
             ("images.processed", _FAILED, "tenant.usage"), True, "feeders",
             "Serve app `embedder` (Embedder), storage", in_flight="feeder_batches_in_flight"),
    StageDef("indexing", "actors.indexer:build_handler", ("images.processed", "images.deleted"),
             ("images.indexed", _FAILED), True, "indexers", "vector store"),
    StageDef("dedup", "actors.dedup:build_handler", ("images.processed", "images.deleted"),
             ("duplicates.found", _FAILED), True, "dedupers", "hash index, vector store"),
    StageDef("projection", "ingestion.projection:build_handler",
             ("images.validated", "images.processed", "images.indexed", _FAILED,
              "duplicates.found", "images.validated.bulk"), (), False, "projectors", "catalog",
             in_flight="store_batches_in_flight"),
    StageDef("usage", "ingestion.usage:build_handler", ("tenant.usage",), (), False, None,
             "catalog (usage table)", in_flight="store_batches_in_flight"),
)

BY_NAME = {stage.name: stage for stage in STAGES}
RETRYING = tuple(stage.name for stage in STAGES if stage.retries)


def stage_specs(settings: Settings) -> list[tuple[StageSpec, int]]:
    """Every consumer stage the stack runs, with its actor count from settings."""
    return [(stage.spec(settings), stage.actors(settings)) for stage in STAGES]
