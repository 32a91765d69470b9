"""The ``VectorStore`` protocol and the types every backend shares.

Both backends keep one collection per model id (vectors of different models
never share an index), isolate tenants, and key objects by
``uuid5(tenant, image_id)`` so that a redelivered event overwrites, never adds.
Scores are cosine similarities (1 = same direction).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np

_OBJECT_NS = uuid.UUID("9a7c1c52-8a3e-4c1b-b0a4-5f3e2d1c0b9a")


class VectorStoreUnavailable(RuntimeError):
    """The store did not take a write or answer a query (a transient fault)."""


def object_id(tenant_id: str, image_id: str) -> str:
    """The deterministic id of an image's vector: the same event always hits the same object."""
    return str(uuid.uuid5(_OBJECT_NS, f"{tenant_id}/{image_id}"))


def is_random_init(model_id: str) -> bool:
    """Whether vectors of this model id come from random weights (meaningless for search
    and for the similar tier): ids ``<arch>/random-init-seed<N>``."""
    return "/random-init" in model_id


def collection_name(model_id: str) -> str:
    """A collection/table name for a model id, valid in Weaviate (capitalised) and LanceDB."""
    readable = re.sub(r"[^A-Za-z0-9]+", "_", model_id).strip("_")[:48]
    digest = hashlib.sha1(model_id.encode()).hexdigest()[:8]
    return f"DeepLens_{readable}_{digest}"


@dataclass(frozen=True)
class VectorRecord:
    tenant_id: str
    image_id: str
    vector: np.ndarray
    original_file_name: str
    uploaded_at: datetime


@dataclass(frozen=True)
class Hit:
    image_id: str
    score: float
    original_file_name: str
    uploaded_at: datetime | None


class VectorStore(Protocol):
    backend: str

    def upsert(self, model_id: str, records: list[VectorRecord]) -> None:
        """Write (or overwrite) records; raise VectorStoreUnavailable unless all were taken."""

    def search(self, model_id: str, tenant_id: str, vector: np.ndarray, k: int,
               exclude: frozenset[str] = frozenset()) -> list[Hit]:
        """The tenant's k nearest images in the model's collection, best first."""

    def get_vector(self, model_id: str, tenant_id: str, image_id: str) -> np.ndarray | None: ...

    def delete(self, tenant_id: str, image_id: str) -> int:
        """Remove the image's vector from every collection; how many were removed."""

    def count(self, model_id: str, tenant_id: str) -> int: ...

    def close(self) -> None: ...
