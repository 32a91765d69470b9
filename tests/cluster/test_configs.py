"""The cluster configs load with Ray's own validation."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).parent.parent.parent


def test_ray_cluster_yaml_passes_ray_autoscaler_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))  # raises on anything Ray's schema rejects
    assert config["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1
    assert config["head_node_type"] in config["available_node_types"]


def test_every_ray_cluster_key_is_commented() -> None:
    """Each key has a comment on the line above or at the end of its line."""
    lines = (ROOT / "ray-cluster.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip().removeprefix("- ")
        if not stripped or stripped.startswith("#") or ":" not in stripped.split(" ")[0]:
            continue
        above = lines[index - 1].strip() if index else ""
        assert above.startswith("#") or " # " in line, (
            f"ray-cluster.yaml line {index + 1} has no comment: {line}")


def test_serve_config_passes_serve_schema_and_imports_resolve() -> None:
    import importlib

    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((ROOT / "cluster" / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    names = {app.name for app in schema.applications}
    assert names == {"embedder", "gateway"}
    for app in schema.applications:
        module, _, attr = app.import_path.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
    embedder = next(a for a in schema.applications if a.name == "embedder")
    deployment = embedder.deployments[0]
    assert deployment.ray_actor_options.num_gpus == 1
    assert deployment.user_config["max_batch_size"] == 256


def test_ray_dashboard_listens_on_loopback_only() -> None:
    """Its job API runs any command without authentication: never on a public address."""
    config = yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in (ROOT / "ray-cluster.yaml").read_text()
