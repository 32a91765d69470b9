"""benchmarks.sizing: the arithmetic from measured CPU per image and a card's rate to
partitions, actors, cores and Gateway replicas, and README's table is its output."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import sizing

ROOT = Path(__file__).parent.parent.parent


def test_cores_actors_and_partitions_follow_from_the_inputs() -> None:
    cpu = {"validation": 0.5, "embedding": 1.0, "indexing": 0.25, "dedup": 2.0,
           "projection": 0.1, "usage": 0.05, "gateway": 4.0, "http proxy": 1.0}
    plan = sizing.plan(cpu, per_gpu=1000.0, gpus=2, utilisation=0.5, edge_share=0.5)
    stages = {s.stage: s for s in plan.stages}
    assert plan.images_per_s == 2000
    # 2000 images/s x 1 ms / 0.5 busy = 4 cores
    assert stages["embedding"].cores == pytest.approx(4.0)
    assert stages["embedding"].actors == 4
    assert stages["embedding"].setting == "DEEPLENS_ACTORS__FEEDERS=4"
    assert stages["dedup"].actors == 8 and stages["indexing"].actors == 1
    assert stages["validation"].cores == pytest.approx(2.0)
    # the edge carries half the images
    assert stages["gateway"].cores == pytest.approx(8.0)
    assert stages["gateway"].setting == "DEEPLENS_SERVE__GATEWAY_REPLICAS=8"
    assert stages["http proxy"].cores == pytest.approx(2.0)
    assert stages["usage"].actors == 1  # not scaled by a setting
    topics = {t.topic: t for t in plan.topics}
    assert topics["images.processed"].partitions == 8  # dedup's 8 > indexer's 1 > seed's 3
    assert topics["images.processed"].readers == ("indexing", "dedup", "projection")
    assert topics["images.validated"].partitions == 4
    assert topics["images.uploaded"].partitions == 3  # validation's 2 < the seed's 3
    assert topics["tenant.usage"].partitions == 6


def test_the_card_rate_is_the_lower_of_model_and_decode() -> None:
    gpu = {"card": "H", "decoder": "nvjpeg", "decode_images_per_s": 9000.0,
           "rows": [{"model": "ViT-B-32", "dtype": "bf16", "batch": 256,
                     "images_per_s": 30000.0},
                    {"model": "ViT-L-14", "dtype": "bf16", "batch": 64,
                     "images_per_s": 2700.0}]}
    rate, source = sizing.per_gpu_rate(gpu, "ViT-B-32")
    assert rate == 9000.0 and "decode-bound" in source
    rate, source = sizing.per_gpu_rate(gpu, "ViT-L-14")
    assert rate == 2700.0 and "decode" not in source
    with pytest.raises(SystemExit):
        sizing.per_gpu_rate(gpu, "RN50")


def test_ceiling_results_net_of_fixed_cost_are_preferred() -> None:
    results = {"images": 200, "size": "640x480",
               "cpu_ms_per_image_by_role": {"stage dedup": 3.0, "broker": 2.0},
               "marginal_cpu_ms_per_image_by_role": {"stage dedup": 2.0, "Serve Gateway": 5.0}}
    cpu, source = sizing.stage_cpu_ms(results)
    assert cpu == {"dedup": 2.0, "gateway": 5.0} and "net of the fixed cost" in source
    cost = {"cpu_ms_per_image": {"jpeg 0.3 MP": {"feeder": 1.5, "edge": 3.0,
                                                 "embedder decode": 9.0}}}
    assert sizing.stage_cpu_ms(cost)[0] == {"embedding": 1.5, "gateway": 3.0}


def test_readme_table_is_the_calculators_output() -> None:
    command, table, now = sizing.readme_table((ROOT / "README.md").read_text())
    assert command.startswith("python -m benchmarks.sizing --gpus")
    assert table.strip() == now, "README's sizing table is stale: python -m benchmarks.sizing " \
                                 "--update-readme"


def test_update_readme_rewrites_only_the_block(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    stale = sizing.README_BLOCK.sub(lambda m: m.group(0).replace(m["table"], "| old |"),
                                    readme)
    path = tmp_path / "README.md"
    path.write_text(stale)
    assert sizing.update_readme(path)
    assert path.read_text() == readme
    assert not sizing.update_readme(path)
