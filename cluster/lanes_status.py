"""``deeplens status``'s lane lines: lag and messages written per lane (live, bulk),
from the same /metrics text the stage table reads."""

from __future__ import annotations

from collections import defaultdict

from deeplens.lanes import BULK_SUFFIX, lane_of


def lane_figures(text: str) -> dict[str, dict[str, float]]:
    """Per lane: messages not yet committed (over every stage reading it) and messages
    ever written to its entry topics (``images.uploaded``, ``images.validated``)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = defaultdict(lambda: {"lag": 0.0, "written": 0.0})
    entry = ("images.uploaded", "images.validated")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            topic = sample.labels.get("topic", "")
            if sample.name == "deeplens_consumer_lag" and topic.removesuffix(BULK_SUFFIX) \
                    in entry:
                out[lane_of(topic)]["lag"] += sample.value
            elif sample.name == "deeplens_topic_messages_total" and \
                    topic.removesuffix(BULK_SUFFIX) == entry[0]:
                out[lane_of(topic)]["written"] += sample.value
    return dict(out)


def print_lanes(text: str) -> None:
    figures = lane_figures(text)
    if not figures:
        return
    print("lanes: " + "; ".join(
        f"{lane} lag {f['lag']:.0f}, {f['written']:.0f} uploads written"
        for lane, f in sorted(figures.items(), key=lambda kv: kv[0] != "live")))
