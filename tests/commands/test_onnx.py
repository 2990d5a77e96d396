"""ONNX export verified by onnxruntime; formats this machine cannot write fail in one line."""
import os
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms

from src.commands import export
from tests.conftest import ROOT, TINY_CONFIG, make_batch

ort = pytest.importorskip("onnxruntime")


@pytest.mark.e2e
def test_onnxruntime_equals_the_mindspore_network(tmp_path, tiny_config, tiny_checkpoint):
    net, path = tiny_checkpoint
    config = tiny_config.copy()
    config.ckpt_path = path
    config.file_name = str(tmp_path / "tiny")
    config.file_format = "ONNX"
    config.export_batch_size = 2
    exported = export.run_export(config)
    assert exported.endswith(".onnx") and os.listdir(tmp_path) == ["tiny.onnx"]
    image, ids, mask, _ = make_batch(config, batch=2, seed=3)
    net.set_train(False)
    expected = net(image, ids, mask).asnumpy()
    session = ort.InferenceSession(exported, providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [
        ("image", [2, 3, 64, 64]), ("input_ids", [2, 12]), ("attention_mask", [2, 12])]
    feeds = dict(zip((i.name for i in session.get_inputs()), (t.asnumpy() for t in (image, ids, mask))))
    (actual,) = session.run(None, feeds)
    assert actual.shape == expected.shape == (2, 1, 64, 64)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


def test_air_is_refused_off_ascend_before_any_work(tmp_path):
    result = subprocess.run([sys.executable, "export.py", "--config_path", TINY_CONFIG, "--ckpt_path",
                             str(tmp_path / "absent.ckpt"), "--file_format", "AIR", "--file_name",
                             str(tmp_path / "model")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --file_format AIR needs --device_target Ascend (the AIR format is written by the Ascend toolkit); "
        "--device_target is CPU"]
    assert not list(tmp_path.iterdir())


def test_an_export_failure_is_one_line_naming_the_format_and_the_op(tmp_path, monkeypatch, tiny_config,
                                                                    tiny_checkpoint):
    def refuse(*args, **kwargs):
        open(kwargs["file_name"], "wb").close()  # a partial file, which must not stay
        raise RuntimeError("Can not find key Erf in convert map. Exporting Erf operator is not yet supported.\n\n"
                           "----------------------------------------------------\n- C++ Call Stack: ...")

    monkeypatch.setattr(ms, "export", refuse)
    config = tiny_config.copy()
    config.ckpt_path = tiny_checkpoint[1]
    config.file_name = str(tmp_path / "tiny")
    config.file_format = "ONNX"
    with pytest.raises(ValueError) as caught:
        export.run_export(config)
    assert str(caught.value) == ("--file_format ONNX: MindSpore could not export the network: Can not find key Erf "
                                 "in convert map. Exporting Erf operator is not yet supported.")
    assert not list(tmp_path.iterdir())
