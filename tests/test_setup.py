"""The course's own promises about its setup: pins agree, JupyterLab starts, the code is lint-clean."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def course_script_pin(name: str) -> str:
    return re.search(rf"^{name}=(\S+)$", (ROOT / "course").read_text(), re.M).group(1)


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = environment["dependencies"]
    python = next(d for d in conda if isinstance(d, str) and d.startswith("python="))
    pip = next(d["pip"] for d in conda if isinstance(d, dict))
    assert project["requires-python"] == ">=3.11" and python == "python=3.11"
    assert "-e .[course]" in pip
    torch_pins = {d for d in project["dependencies"] if d.startswith("torch")}
    assert torch_pins == {d for d in pip if d.startswith("torch")} == {f"torch=={course_script_pin('TORCH_VERSION')}"}


def test_course_script_pins_agree_with_pyproject_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f"deepspeed=={course_script_pin('DEEPSPEED_VERSION')}" in extras["deepspeed"]
    assert f"horovod=={course_script_pin('HOROVOD_VERSION')}" in extras["horovod"]
    assert any(d.startswith(f"tf-keras=={course_script_pin('TF_VERSION')}") for d in extras["tensorflow"])


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "./course test" in readme and "./course lab" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec ./course test" in ci
    assert ci.index("scripts/install_browser.sh") < ci.index("exec ./course test")  # the browser test runs in CI


def test_course_lab_serves_the_notebooks():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "dtutor-test"
    lab = subprocess.Popen(
        [str(ROOT / "course"), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(ROOT / ".venv" / "jupyter-runtime-test")},
    )
    try:
        deadline, listing = time.monotonic() + 300, None  # includes a setup re-run if pins changed
        while time.monotonic() < deadline and listing is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=5) as r:
                    listing = json.load(r)
            except OSError:
                assert lab.poll() is None, "JupyterLab exited early"
                time.sleep(1)
        assert listing is not None, "JupyterLab did not answer within 300 s"
        names = {item["name"] for item in listing["content"]}
        assert "00_gpu_detection.ipynb" in names and "02_distributed_data_parallel.ipynb" in names
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=10) as r:
            assert r.status == 200
    finally:
        os.killpg(lab.pid, 15)
        lab.wait(timeout=30)


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "dtutor", "tests"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize("in_turn", ["0", "1"], ids=["side-by-side", "in-turn"])
def test_course_test_runs_the_notebooks_even_after_a_unit_test_fails(tmp_path, in_turn):
    """``./course test`` runs both parts (side by side, or in turn with ``DTUTOR_TEST_IN_TURN=1``), shows the
    notebooks' report after the units', reports each, and exits non-zero when either failed."""
    import hashlib
    import shutil
    import stat

    course = tmp_path / "course"
    shutil.copy(ROOT / "course", course)
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    fake_python = venv_bin / "python"  # a stand-in for the venv's python: unit tests fail, nbval passes
    fake_python.write_text('#!/bin/sh\necho "$*" >> "$(dirname "$0")/calls"\n'
                           'case "$*" in *--nbval*) echo "nbval report"; exit 0;; *) sleep 1; echo "units report"; '
                           'exit 1;; esac\n')
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
    # the set-up stamp: the fingerprint of the files setup watches (here, only the copied script)
    (tmp_path / ".venv" / ".dtutor-setup").write_text(hashlib.sha256(course.read_bytes()).hexdigest()[:16] + "\n")
    done = subprocess.run(["bash", str(course), "test", "-q"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DTUTOR_TEST_IN_TURN": in_turn})
    calls = (venv_bin / "calls").read_text().splitlines()
    assert sorted(call.split()[:3] for call in calls) == [["-m", "pytest", "--nbval"], ["-m", "pytest", "tests/"]]
    assert all(call.split()[-1] == "-q" for call in calls)  # the arguments reach both
    units, notebooks = sorted(calls, key=lambda call: "--nbval" in call)
    later = ["tests/test_browser.py", "tests/test_launch_slurm.py"]  # they run after the notebooks, once
    assert [f"--ignore={name}" in units.split() for name in later] == [True, True]
    assert [name in notebooks.split() for name in later] == [True, True]
    assert done.returncode != 0
    assert done.stdout.index("units report") < done.stdout.index("nbval report")
    last = done.stdout.splitlines()[-1]
    assert last == "[test] unit tests: FAILED (pytest exit code 1); notebooks under nbval: passed"
