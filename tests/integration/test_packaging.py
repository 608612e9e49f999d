"""`pip install .` into a fresh virtual environment gives a working `taskqueue` command.

Marked ``slow`` and ``packaging``: it builds the package (pip fetches the
build backend, setuptools, from the package index) and is selected by
``.ci/run`` with ``-m "not slow or packaging"`` on every interpreter it tests.
The package is built from a copy of just the files it needs, so the test
also shows that nothing else in the checkout is required.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import taskqueue
from taskqueue.objectstore import LocalObjectStore
from taskqueue.workload import create_sources, generate_tasks

pytestmark = [pytest.mark.slow, pytest.mark.packaging]

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600  # hang guard only (a cold pip cache downloads setuptools)


def clean_env() -> dict[str, str]:
    """No PYTHONPATH (the checkout must not leak in), no TQ_* settings."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("TQ_")}


def sh(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), cwd=cwd, env=clean_env(), capture_output=True, text=True,
                            timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{argv}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A fresh venv with the package installed from a copy of pyproject.toml, README.md and taskqueue/."""
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "taskqueue", src / "taskqueue", ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    sh(sys.executable, "-m", "venv", str(venv), cwd=root)
    python = venv / "bin" / "python"
    sh(str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(src), cwd=root)
    work = root / "work"
    work.mkdir()
    return {"python": python, "command": venv / "bin" / "taskqueue", "work": work, "root": root}


def test_the_command_is_the_same_main_as_the_script(installed):
    help_text = sh(str(installed["command"]), "run", "--help", cwd=installed["work"]).stdout
    for flag in ("--tasks", "--metrics-port", "--metrics-host", "--metrics-interval", "--no-progress"):
        assert flag in help_text
    script = sh(sys.executable, str(REPO / "task_queue_optimized.py"), "run", "--help", cwd=REPO).stdout
    # The same parser: everything after the usage lines (whose wrapping depends on the program's name).
    assert help_text.split("\n\n", 1)[1] == script.split("\n\n", 1)[1]
    assert help_text.startswith("usage: taskqueue run ") and script.startswith("usage: task_queue_optimized.py run ")
    probe = ("import importlib.metadata as m, json, taskqueue; "
             "[ep] = [e for e in m.entry_points(group='console_scripts') if e.name == 'taskqueue']; "
             "d = m.distribution('taskqueue'); "
             "print(json.dumps({'entry': ep.value, 'file': taskqueue.__file__, 'version': taskqueue.__version__, "
             "'dist_version': d.version, 'requires': d.requires or [], "
             "'extras': d.metadata.get_all('Provides-Extra') or [], "
             "'installed': sorted(x.metadata['Name'].lower() for x in m.distributions())}))")
    info = json.loads(sh(str(installed["python"]), "-c", probe, cwd=installed["work"]).stdout)
    assert info["entry"] == "taskqueue.cli:main"
    assert Path(info["file"]).is_relative_to(installed["root"] / "venv")  # the installed copy, not the checkout
    assert info["version"] == info["dist_version"] == taskqueue.__version__  # one version, read dynamically
    assert sorted(info["extras"]) == ["dotenv", "images"]
    assert all("extra ==" in requirement for requirement in info["requires"]), info["requires"]  # no runtime deps
    by_extra = {re.search(r"extra == ['\"](\w+)['\"]", r).group(1): re.match(r"[\w.-]+", r).group(0).lower()
                for r in info["requires"]}
    assert by_extra == {"images": "pillow", "dotenv": "python-dotenv"}
    assert set(info["installed"]) <= {"pip", "setuptools", "taskqueue"}  # only the standard library beside it


def test_a_tiny_run_with_the_installed_command(installed, tmp_path):
    tasks = generate_tasks(4, seed=3, duplicate_fraction=0.0, variants="gzip")
    store = tmp_path / "store"
    create_sources(LocalObjectStore(store, fsync=False), tasks, seed=3)
    (tmp_path / "tasks.json").write_text(json.dumps(tasks), encoding="utf-8")
    args = ["run", "--tasks", str(tmp_path / "tasks.json"), "--db", str(tmp_path / "tasks.db"),
            "--store", str(store), "--metrics-out", str(tmp_path / "metrics.json")]
    result = sh(str(installed["command"]), *args, cwd=installed["work"])
    assert "tasks 4: 4 succeeded, 0 already done (deduplicated), 0 dead-lettered, 0 unfinished" in result.stdout
    assert json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))["counters"]["succeeded"] == 4
    assert sorted(p.name for p in (store / "variants" / "gzip").rglob("*.gz")) == \
        sorted(Path(t["image_key"]).name + ".gz" for t in tasks)
    again = sh(str(installed["python"]), "-m", "taskqueue", *args, cwd=installed["work"])  # python -m too
    assert "tasks 4: 0 succeeded, 4 already done (deduplicated)" in again.stdout
