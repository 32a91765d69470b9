"""A benchmark run never touches the recorded baseline: by default its results go to the
git-ignored benchmarks/runs/, results/ changes only with --record, and every file says
how, where and with what it was made."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import common, event_codec_bench, spread

ROOT = Path(__file__).parent.parent.parent


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """runs/ in a temporary folder; the parser's destination reset after the test."""
    monkeypatch.setattr(common, "RUNS_DIR", tmp_path / "runs")
    yield tmp_path / "runs"
    common.configure()


def run_script(monkeypatch: pytest.MonkeyPatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["event_codec_bench", "--events", "20", *argv])
    event_codec_bench.main()


def test_a_run_without_record_leaves_results_alone(runs: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(common.RESULTS_DIR)
    run_script(monkeypatch)
    assert snapshot(common.RESULTS_DIR) == before
    written = list(runs.glob("event_codec-*.json"))
    assert len(written) == 1, list(runs.iterdir())
    data = json.loads(written[0].read_text())
    for key in ("command", "commit", "machine", "when", "settings", "host", "versions"):
        assert data[key], key
    assert data["settings"]["events"] == 20
    assert data["host"]["cores"] and data["host"]["cpu"]
    assert "gpus" in data["host"] and "numpy" in data["versions"]
    assert data["command"].endswith("--events 20")


def test_runs_folder_is_ignored_by_git() -> None:
    answer = subprocess.run(["git", "check-ignore", "-q", "benchmarks/runs/x-1.json"], cwd=ROOT)
    if answer.returncode == 128:
        pytest.skip("not a git checkout")
    assert answer.returncode == 0, "benchmarks/runs/ is not in .gitignore"


def test_out_names_a_file_or_a_folder(runs: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run_script(monkeypatch, "--out", str(tmp_path / "mine.json"))
    assert json.loads((tmp_path / "mine.json").read_text())["benchmark"] == "event_codec"
    (tmp_path / "folder").mkdir()
    run_script(monkeypatch, "--out", str(tmp_path / "folder"))
    assert len(list((tmp_path / "folder").glob("event_codec-*.json"))) == 1
    assert not runs.exists()


def test_record_writes_the_baseline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    parser = common.bench_parser("x")
    parser.parse_args(["--record"])
    try:
        path = common.record("demo", {"figure": 1.5})
    finally:
        common.configure()
    assert path == tmp_path / "demo.json"
    assert json.loads(path.read_text())["figure"] == 1.5


def test_out_and_record_together_are_refused() -> None:
    with pytest.raises(SystemExit):
        common.bench_parser("x").parse_args(["--out", "a.json", "--record"])
    common.configure()


def test_two_runs_in_one_second_keep_both(runs: Path) -> None:
    first = common.record("same", {"a": 1})
    second = common.record("same", {"a": 2})
    assert first != second and first.exists() and second.exists()


def test_secrets_in_settings_are_masked(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPLENS_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("DEEPLENS_ACTORS__FEEDERS", "3")
    env = json.loads(common.record("env", {}).read_text())["settings"]["environment"]
    assert env["DEEPLENS_KAFKA__SASL_PASSWORD"] == "***"
    assert env["DEEPLENS_ACTORS__FEEDERS"] == "3"


def test_repeats_give_medians_and_spread() -> None:
    runs = [{"rate": 10.0, "rows": [{"p50_ms": 3.0, "name": "a"}], "lag": [1]},
            {"rate": 14.0, "rows": [{"p50_ms": 1.0, "name": "a"}], "lag": [1, 2]},
            {"rate": 11.0, "rows": [{"p50_ms": 2.0, "name": "a"}], "lag": [1, 2, 3]}]
    summary = spread.summarize(runs)
    assert summary["rate"] == 11.0
    assert summary["rows"] == [{"p50_ms": 2.0, "name": "a"}]
    assert summary["lag"] == [1]  # series of unequal length: the first run's
    assert summary["spread"] == {"rate": [10.0, 14.0], "rows[0].p50_ms": [1.0, 3.0]}
    assert summary["repeat"] == 3 and summary["runs"] == runs
    assert spread.summarize([{"rate": 1}]) == {"rate": 1, "repeat": 1}


def test_the_commit_is_dirty_for_code_changes_but_not_for_documents_or_results(tmp_path) -> None:
    """A RESULTS.md edit or a recorded file written while a benchmark runs does not mark
    its figures as coming from another tree; a code change does."""
    import subprocess

    from benchmarks.common import commit

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    for name in ("code.py", "RESULTS.md", "benchmarks/results/x.json"):
        (tmp_path / name).write_text("1\n")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "one")
    assert not commit(tmp_path).endswith("+dirty")
    (tmp_path / "RESULTS.md").write_text("2\n")
    (tmp_path / "benchmarks/results/x.json").write_text("2\n")
    assert not commit(tmp_path).endswith("+dirty")
    (tmp_path / "code.py").write_text("2\n")
    assert commit(tmp_path).endswith("+dirty")
