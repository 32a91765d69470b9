"""The stage table (cluster/stages.py) agrees with the handlers, topics.toml, settings and README."""

import importlib
import typing
from pathlib import Path

import pytest

from cluster.stages import RETRYING, STAGES, stage_specs
from deeplens.events import Stage
from deeplens.settings import ActorSettings, Settings
from deeplens.topics import TOPICS, retry_ladder

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_each_handler_module_matches_its_row(stage) -> None:
    module_name, _, factory = stage.handler.partition(":")
    module = importlib.import_module(module_name)
    assert module.STAGE == stage.name
    assert tuple(module.TOPICS) == stage.inputs
    assert callable(getattr(module, factory))
    assert stage.name in typing.get_args(Stage)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_topics_and_groups_agree_with_topics_toml(stage) -> None:
    for topic in stage.inputs:
        assert stage.name in TOPICS[topic].groups, f"{topic} does not list group {stage.name}"
    for topic in stage.outputs:
        assert topic in TOPICS
    assert bool(retry_ladder(stage.name)) == stage.retries


def test_settings_named_by_the_table_exist() -> None:
    fields = ActorSettings.model_fields
    for stage in STAGES:
        assert stage.count is None or stage.count in fields
        assert stage.in_flight is None or stage.in_flight in fields
    settings = Settings(actors={"dedupers": 3, "feeder_batches_in_flight": 4})
    specs = {spec.stage: (spec, count) for spec, count in stage_specs(settings)}
    assert specs["dedup"][1] == 3 and specs["usage"][1] == 1
    assert specs["embedding"][0].max_in_flight == 4 and specs["indexing"][0].max_in_flight == 1
    assert specs["projection"][0].max_in_flight == specs["usage"][0].max_in_flight == 2


def test_only_retrying_stages_have_ladders_and_cli_choices() -> None:
    import tomllib

    table = tomllib.loads((ROOT / "deeplens" / "topics.toml").read_text())
    assert set(table["retries"]["stages"]) == set(RETRYING)
    from deeplens.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["dlq", "list", "--stage", "projection"])
    assert build_parser().parse_args(["dlq", "list", "--stage", "dedup"]).stage == "dedup"


def test_readme_has_a_row_per_stage() -> None:
    readme = (ROOT / "README.md").read_text()
    for stage in STAGES:
        module = stage.handler.partition(":")[0].replace(".", "/") + ".py"
        row = next((line for line in readme.splitlines()
                    if line.startswith(f"| `{stage.name}` |")), None)
        assert row is not None, f"README has no stage row for {stage.name}"
        assert f"`{module}`" in row and all(f"`{t}`" in row for t in stage.inputs)
