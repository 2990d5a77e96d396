"""Output paths are checked before any long work: one line naming the flag and the path, nothing written."""
import os
import subprocess
import sys

import pytest

from src.files import check_output_file, check_output_folder
from tests.conftest import ROOT, TINY_CONFIG

ENV = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT)


@pytest.fixture
def places(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("keep me")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    yield tmp_path
    locked.chmod(0o700)


@pytest.mark.parametrize("name, message", [
    ("folder", "is a folder; give a file name"),
    ("a_file/out.json", "a_file is a file, not a folder"),
    ("a_file/deeper/out.json", "a_file is a file, not a folder"),
    ("locked/out.json", "cannot write in"),
])
def test_unusable_output_files_are_named(places, name, message):
    if name.startswith("locked") and os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    with pytest.raises(ValueError, match=message) as info:
        check_output_file(str(places / name), "result_json")
    assert str(info.value).startswith(f"--result_json {places / name}")


def test_usable_output_files_pass_and_create_nothing(places):
    check_output_file(str(places / "new" / "deeper" / "out.json"), "result_json")
    check_output_file(str(places / "a_file"), "result_json")  # an existing file is replaced atomically
    assert not (places / "new").exists() and (places / "a_file").read_text() == "keep me"


@pytest.mark.parametrize("name, message", [
    ("a_file", "is a file, not a folder"),
    ("a_file/run", "a_file is a file, not a folder"),
])
def test_unusable_output_folders_are_named(places, name, message):
    with pytest.raises(ValueError, match=message):
        check_output_folder(str(places / name), "output_dir")
    check_output_folder(str(places / "folder" / "new"), "output_dir")


def run(script, *args):
    return subprocess.run([sys.executable, *script, "--config_path", TINY_CONFIG, *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script, args, expected", [
    # the checkpoint and data named here do not exist: the output path must be refused before they are read
    (["eval.py"], ["--ckpt_path", "missing.ckpt", "--mindrecord_dir", "missing", "--result_json", "{folder}"],
     "--result_json {folder} is a folder"),
    (["eval.py"], ["--ckpt_path", "missing.ckpt", "--mindrecord_dir", "missing", "--per_sample_json",
                   "{a_file}/samples.jsonl"], "{a_file} is a file, not a folder"),
    (["export.py"], ["--ckpt_path", "missing.ckpt", "--file_name", "{a_file}/model"],
     "--file_name {a_file}/model.mindir"),
    (["predict.py"], ["--ckpt_path", "missing.ckpt", "--image", "{a_file}", "--sentence", "the red one",
                      "--vocab_file", "{a_file}", "--output", "{folder}/x.gif"], "name the picture .png"),
    (["predict.py"], ["--ckpt_path", "missing.ckpt", "--image", "{a_file}", "--sentence", "the red one",
                      "--vocab_file", "{a_file}", "--output", "{folder}"], "--output {folder} is a folder"),
    (["predict.py"], ["--ckpt_path", "missing.ckpt", "--image", "{a_file}", "--sentence", "the red one",
                      "--vocab_file", "{a_file}", "--output", "{a_file}/x.png"], "{a_file} is a file, not a folder"),
    (["train.py"], ["--mindrecord_dir", "missing", "--output_dir", "{a_file}/run"], "{a_file} is a file, not a folder"),
    (["-m", "src.data.build_mindrecord"], ["--refer_data_root", "{folder}", "--image_root", "{folder}", "--vocab_file",
                                           "missing", "--mindrecord_dir", "{a_file}"],
     "--mindrecord_dir {a_file} is a file"),
])
def test_commands_refuse_bad_output_paths_first(tmp_path, script, args, expected):
    folder, a_file = tmp_path / "folder", tmp_path / "a_file"
    folder.mkdir()
    a_file.write_text("keep me")
    names = {"folder": str(folder), "a_file": str(a_file)}
    result = run(script, *[arg.format(**names) for arg in args])
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected.format(**names) in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert sorted(os.listdir(tmp_path)) == ["a_file", "folder"] and not os.listdir(folder)
    assert a_file.read_text() == "keep me"
