"""Stage actors import the project's own packages, never a stray module in the folder
`deeplens up` was started from (Ray puts the driver's working directory first on every
worker's sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys, ray
from cluster.stack import from_project_root
options = dict(num_cpus=1, include_dashboard=False, log_to_driver=False)
if sys.argv[1] == "project-root":
    with from_project_root():
        ray.init(**options)
else:
    ray.init(**options)

@ray.remote
def imported():
    import actors
    return getattr(actors, "__file__", None) or "namespace"

import pathlib, deeplens
project = pathlib.Path(deeplens.__file__).resolve().parent.parent
print("ACTORS " + ray.get(imported.remote()) + " EXPECTED " + str(project / "actors" / "__init__.py"))
ray.shutdown()
"""


def _actors_in_a_worker(folder: Path, mode: str) -> tuple[str, str]:
    """(the ``actors`` a Ray worker imported, the project's own ``actors``)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    run = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=folder, env=env,
                         capture_output=True, text=True, timeout=180)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("ACTORS ")]
    assert run.returncode == 0 and lines, run.stderr[-2000:]
    found, _, expected = lines[-1].removeprefix("ACTORS ").partition(" EXPECTED ")
    return found, expected


def test_a_stray_actors_py_in_the_launch_folder_is_not_imported(tmp_path) -> None:
    (tmp_path / "actors.py").write_text("# someone's scratch file\n")
    found, _ = _actors_in_a_worker(tmp_path, "plain")
    assert found == str(tmp_path / "actors.py"), \
        "without the guard Ray's workers import the stray file (the hazard is real)"
    found, expected = _actors_in_a_worker(tmp_path, "project-root")
    assert found == expected and found.endswith("actors/__init__.py")
