"""A device target this machine cannot use ends in one line that names what is missing."""
import ctypes
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY_CONFIG

ENV = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT)


def loadable(library):
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("target, library", [("GPU", "libcuda.so.1"), ("Ascend", "libascendcl.so")])
def test_missing_accelerator_library_is_one_line(tmp_path, target, library):
    if loadable(library):
        pytest.skip(f"{library} is present on this machine")
    result = subprocess.run([sys.executable, "export.py", "--config_path", TINY_CONFIG, "--device_target", target,
                             "--ckpt_path", str(tmp_path / "none.ckpt"), "--file_name", str(tmp_path / "model")],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stdout + result.stderr
    assert lines[0].startswith(f"error: --device_target {target}: ") and library in lines[0]
    assert "--device_target CPU" in lines[0]
    assert not os.listdir(tmp_path)


def test_a_plugin_that_refuses_the_target_is_one_line():
    """With the library check passed (faked here), MindSpore's own refusal is cut to its first line."""
    script = ("import src.context as c\n"
              "c.ctypes.CDLL = lambda name: None\n"
              "try:\n"
              "    c.select_device('GPU', 0)\n"
              "except ValueError as err:\n"
              "    print('ValueError:', err)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=300)
    if "ValueError:" not in result.stdout and result.returncode == 0:
        pytest.skip("this MindSpore could select the GPU")
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("ValueError: --device_target GPU: MindSpore ") and "Unsupported device target GPU" in line
    assert "\n" not in line and "C++" not in line
