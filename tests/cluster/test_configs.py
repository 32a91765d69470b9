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


def test_every_node_runs_ray_with_token_auth_and_the_same_token() -> None:
    """Ray 2.60 turns token auth on by itself for a head that finds ~/.ray/auth_token, never
    for a joining worker: without the mode and the token on every node, workers are refused
    (InvalidAuthToken ... RAY_AUTH_MODE)."""
    config = yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), (key, starts)
    mounts = config["file_mounts"]
    assert mounts.get("/home/ubuntu/.ray/auth_token") == "~/.ray/auth_token", mounts
    assert config["auth"]["ssh_user"] == "ubuntu"  # the home the token path is under
    readme = (ROOT / "README.md").read_text()
    assert "ray get-auth-token --generate" in readme and "RAY_AUTH_MODE=token" in readme


def _readme_env_sample() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("cat > deeplens.env <<'ENV'")
    body = readme[readme.index("\n", start) + 1:]
    return body[:body.index("\nENV\n") + 1]


def test_readme_env_sample_loads_when_sourced_and_places_actors_on_offered_resources(
        tmp_path) -> None:
    """Sourced as the README says (`set -a; . deeplens.env`), every line is a valid setting,
    the placement JSON survives the shell's quote removal, and each custom resource it asks
    for is offered by a node type of ray-cluster.yaml."""
    import os
    import subprocess

    from deeplens.settings import load_settings

    env_file = tmp_path / "deeplens.env"
    env_file.write_text(_readme_env_sample())
    dumped = subprocess.run(["bash", "-c", f"set -a; . {env_file}; env -0"], check=True,
                            capture_output=True, env={"PATH": os.environ["PATH"]}).stdout
    env = dict(item.split("=", 1) for item in dumped.decode().split("\0") if "=" in item)
    sample = {k: v for k, v in env.items() if k.startswith("DEEPLENS_")}
    assert "DEEPLENS_ACTORS__RESOURCES" in sample and "DEEPLENS_SERVE__RESOURCES" in sample
    saved = {k: v for k, v in os.environ.items() if k.startswith("DEEPLENS_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(sample)
    try:
        settings = load_settings()
    finally:
        for key in sample:
            os.environ.pop(key, None)
        os.environ.update(saved)
    assert settings.actors.resources and settings.serve.resources
    config = yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())
    offered = set().union(*(t["resources"] for t in config["available_node_types"].values()))
    wanted = set(settings.actors.resources) | set(settings.serve.resources)
    assert wanted <= offered, (wanted, offered)


def test_every_setting_the_readme_names_exists() -> None:
    """Each DEEPLENS_* variable in the README is a real setting (or a known non-setting),
    and the local broker's producer switch is documented."""
    import re

    from deeplens.settings import Settings

    readme = (ROOT / "README.md").read_text()
    assert "`DEEPLENS_KAFKA__ONE_RECORD_PER_BATCH`" in readme.split("## Settings")[1]
    not_settings = {"DEEPLENS_HOME", "DEEPLENS_API_URL", "DEEPLENS_API_KEY",
                    "DEEPLENS_REQUIRE_POSTGRES", "DEEPLENS_WEAVIATE_URL"}
    named = {n for n in re.findall(r"DEEPLENS_[A-Z0-9_]+", readme)
             if not n.endswith("_") and not n.startswith("DEEPLENS_TEST_")}  # tests' own
    for name in sorted(named - not_settings):  # (a trailing _ is a wildcard: ACTORS__*)
        path = name.removeprefix("DEEPLENS_").lower().split("__")
        model: type = Settings
        for part in path:
            fields = getattr(model, "model_fields", None)
            if fields is None:  # a dict setting (e.g. DEDUP__TENANTS): its keys are free
                break
            assert part in fields, f"README names {name}, which is no setting"
            model = fields[part].annotation  # type: ignore[assignment]
