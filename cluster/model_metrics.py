"""A model change in Prometheus and in ``deeplens status``: the active model, the
migration's state and percent, and per tenant images done, left, failed, rate and ETA.
Read from the catalog at each scrape (a few small queries)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

PER_TENANT = (("done", "Images the new model has embedded"),
              ("left", "Images still to re-embed"),
              ("failed", "Images the backfill could not re-embed (original gone, undecodable)"),
              ("rate_per_s", "Images re-embedded per second"),
              ("eta_s", "Seconds until the tenant's backfill is complete"))


class ModelChangeCollector:
    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from cluster.model_ops import describe

        try:
            report = describe(self.settings)
        except Exception:  # noqa: BLE001 - a catalog hiccup must not fail the scrape
            log.warning("model change figures not read", exc_info=True)
            return
        if report["active_model"]:
            active = GaugeMetricFamily("deeplens_active_model", "The model search runs on "
                                       "(1, labelled with its id)", labels=["model"])
            active.add_metric([report["active_model"]], 1)
            yield active
        change = report["migration"]
        if not change:
            return
        labels = [change["source_model"], change["target_model"], change["state"]]
        state = GaugeMetricFamily("deeplens_model_migration_percent", "Re-indexing progress "
                                  "of the model change under way", labels=["source", "target",
                                                                           "state"])
        state.add_metric(labels, change["percent"])
        yield state
        for field, text in PER_TENANT:
            name = "deeplens_model_migration_" + field.replace("_per_s", "_per_second") \
                .replace("eta_s", "eta_seconds")
            family = GaugeMetricFamily(name, text, labels=["tenant", "target"])
            for row in change["tenants"]:
                if row[field] is not None:
                    family.add_metric([row["tenant"], change["target_model"]], row[field])
            yield family


def register_model_metrics(settings: Any) -> ModelChangeCollector:
    from prometheus_client import REGISTRY

    collector = ModelChangeCollector(settings)
    REGISTRY.register(collector)  # type: ignore[arg-type]
    return collector


def print_model_change(text: str) -> None:
    """``deeplens status``'s model lines, from the /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    tenants: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "deeplens_active_model":
                print(f"\nactive model: {sample.labels['model']}")
            elif sample.name == "deeplens_model_migration_percent":
                print(f"model change {sample.labels['source']} -> {sample.labels['target']}: "
                      f"{sample.labels['state']}, re-indexing {sample.value:.1f} %")
            elif sample.name.startswith("deeplens_model_migration_"):
                field = sample.name.removeprefix("deeplens_model_migration_")
                tenants.setdefault(sample.labels["tenant"], {})[field] = sample.value
    for tenant, row in sorted(tenants.items()):
        eta = row.get("eta_seconds")
        print(f"  {tenant:20} done {row.get('done', 0):.0f}, left {row.get('left', 0):.0f}, "
              f"failed {row.get('failed', 0):.0f}, {row.get('rate_per_second', 0):.1f}/s, "
              f"ETA {'-' if eta is None else f'{eta:.0f}s'}")
