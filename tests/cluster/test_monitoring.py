"""Alert rules: promtool checks and unit tests, and every metric they use exists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster.metrics import EXPORTED

MONITORING = Path(__file__).parent.parent.parent / "cluster" / "monitoring"
# Metrics from exporters DeepLens does not own (node_exporter on the Kafka hosts).
EXTERNAL = {"node_filesystem_avail_bytes", "node_filesystem_size_bytes"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("DEEPLENS_REQUIRE_PROMTOOL"):
            pytest.fail("promtool missing: apt-get install prometheus (.ci/run does)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", "alerts.yml"], cwd=MONITORING,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "7 rules found" in check.stdout
    unit = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=MONITORING,
                          capture_output=True, text=True)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_unit_tests_fire_and_clear_every_alert() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
    fired, cleared = set(), set()
    for test in tests:
        for case in test["alert_rule_test"]:
            (fired if case["exp_alerts"] else cleared).add(case["alertname"])
    assert alerts == fired == cleared == {
        "DeepLensConsumerLagHigh", "DeepLensErrorRateHigh", "DeepLensBrokerDiskHigh",
        "DeepLensProcessingSlow", "DeepLensStageDown", "DeepLensImagesStuck",
        "DeepLensEmbedderDown"}


def test_every_metric_in_the_rules_is_exported() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    used = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            used |= set(re.findall(r"\b((?:deeplens|node)_[a-z_]+)", rule["expr"]))
    exported = EXPORTED | {f"{name}_bucket" for name in EXPORTED} | EXTERNAL
    missing = {name for name in used if name not in exported}
    assert not missing, f"rules use metrics nothing exports: {missing}"
    assert "deeplens_consumer_lag" in used and "deeplens_stage_failed_total" in used


def test_grafana_dashboard_uses_exported_metrics() -> None:
    import json

    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 6
    used = {m for e in exprs for m in re.findall(r"\b(deeplens_[a-z_]+)", e)}
    exported = EXPORTED | {f"{n}_bucket" for n in EXPORTED} | {
        "deeplens_uploads_total", "deeplens_upload_seconds_bucket"}
    assert used <= exported, used - exported


def test_the_latency_aggregate_is_cached_between_scrapes(tmp_path) -> None:
    """A whole-table aggregate must not run on every scrape."""
    from cluster.metrics import PipelineCollector
    from deeplens.settings import Settings

    class CountingCatalog:
        calls = 0

        def latency_buckets(self, bounds):
            self.calls += 1
            return [0] * len(bounds), 0, 0.0

    catalog = CountingCatalog()
    collector = PipelineCollector(Settings(data_dir=tmp_path), catalog, {})
    for _ in range(5):
        [family] = list(collector._latency())
    assert family.name == "deeplens_upload_to_indexed_seconds"
    assert catalog.calls == 1
