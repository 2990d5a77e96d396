"""The shell scripts run the project's interpreter, and say so in one line when it has no MindSpore."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY_CONFIG

SCRIPTS = ["run_eval.sh", "run_standalone_train.sh"]


def run_script(name, args, python=None):
    env = {key: value for key, value in os.environ.items() if key != "PYTHON"}
    env.update(GLOG_v="3", PATH="/usr/bin:/bin")  # no activated environment
    if python:
        env["PYTHON"] = python
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", name), *args], cwd="/", env=env,
                          capture_output=True, text=True, timeout=300)


def args_of(name, tmp_path):
    missing = str(tmp_path / "missing")
    if name == "run_eval.sh":
        return ["CPU", str(tmp_path / "none.ckpt"), TINY_CONFIG, "--mindrecord_dir", missing]
    return ["CPU", TINY_CONFIG, "--mindrecord_dir", missing, "--output_dir", str(tmp_path / "out")]


@pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, ".venv", "bin", "python")), reason="no .venv here")
@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_use_the_projects_venv_without_activation(tmp_path, name):
    result = run_script(name, args_of(name, tmp_path))
    # the command itself ran (MindSpore imported) and refused the missing data in its own words
    assert result.returncode == 1
    assert "MindRecord for refcoco/unc" in result.stderr and "ModuleNotFoundError" not in result.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_an_interpreter_without_mindspore_is_one_line(tmp_path, name):
    bare = tmp_path / "bare_python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")  # -S: no site-packages, so no MindSpore
    bare.chmod(0o755)
    result = run_script(name, args_of(name, tmp_path), python=str(bare))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"error: {bare} has no MindSpore: create the project's environment with")
