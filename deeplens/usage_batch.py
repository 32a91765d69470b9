"""Usage counted per tenant per batch: a stage's per-image ``tenant.usage`` events of one
consumer batch folded into one event per (tenant, metric, hour), with the same totals.

The folded event keeps each image's own usage id in ``items``, and the aggregator
counts every item once by that id (``expand``), exactly as it counted the per-image
events: a redelivered batch, whatever its composition, bills nothing twice. What the
fold saves is records on the broker and events to encode and decode, not accuracy.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TypeVar

from deeplens.events import TenantUsage, UsageItem
from deeplens.kafka import Outbound

_NS = uuid.UUID("a3d1c6f2-4b7e-4f0a-9c1d-5e2f7a8b9c30")
T = TypeVar("T")


def _hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def fold_usage(outputs: Sequence[T]) -> list[T]:
    """The outputs with their per-image usage events folded (other outputs untouched,
    in order; the folded events last)."""
    groups: dict[tuple[str, str, datetime], list[TenantUsage]] = {}
    rest: list[T] = []
    for out in outputs:
        event = getattr(out, "event", None)
        if isinstance(out, Outbound) and isinstance(event, TenantUsage) and \
                event.image_id is not None and event.items is None:
            key = (event.tenant_id, event.metric, _hour(event.occurred_at))
            groups.setdefault(key, []).append(event)
        else:
            rest.append(out)
    for (tenant, metric, _), events in groups.items():
        items = [UsageItem(event_id=e.event_id, image_id=e.image_id or "", quantity=e.quantity)
                 for e in events]
        folded = TenantUsage(
            event_id=uuid.uuid5(_NS, ",".join(sorted(str(i.event_id) for i in items))),
            tenant_id=tenant, metric=metric,  # type: ignore[arg-type]
            quantity=sum(i.quantity for i in items), occurred_at=events[0].occurred_at,
            items=items)
        rest.append(Outbound("tenant.usage", tenant, folded))  # type: ignore[arg-type]
    return rest


def expand(event: TenantUsage) -> list[tuple[str, str | None, float]]:
    """What the aggregator counts of an event: (usage id, image id, quantity) per image
    of a folded event; the event itself otherwise."""
    if event.items is None:
        return [(str(event.event_id), event.image_id, event.quantity)]
    return [(str(item.event_id), item.image_id, item.quantity) for item in event.items]
