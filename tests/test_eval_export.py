"""Metrics by hand, MINDIR export equal to the Python network, checkpoints of another config refused."""
import os
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms

from src.checkpoint import CheckpointError, load_network_weights, save_checkpoint
from src.commands.export import example_inputs, run_export
from src.evaluation import RefSegMetrics, format_table
from src.models.coupalign import CoupAlign
from tests.conftest import ROOT, TINY_CONFIG


def masks(*rows):
    return np.array(rows, dtype=bool).reshape(len(rows), 1, -1)


def test_metrics_equal_hand_computed_values():
    metrics = RefSegMetrics()
    pred = masks([0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0])
    gt = masks([1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 1])
    ious = metrics.update(pred, gt)
    # empty prediction: 0/2; empty union: 0 by definition; perfect: 2/2; partial: 2/4
    np.testing.assert_allclose(ious, [0.0, 0.0, 1.0, 0.5])
    result = metrics.result()
    assert result["oIoU"] == pytest.approx((0 + 0 + 2 + 2) / (2 + 0 + 2 + 4))
    assert result["mIoU"] == pytest.approx(1.5 / 4)
    assert result["prec@0.5"] == pytest.approx(2 / 4)
    assert result["prec@0.6"] == pytest.approx(1 / 4)
    assert result["prec@0.9"] == pytest.approx(1 / 4)
    assert result["num_samples"] == 4
    assert "| split |" in format_table({"val": result})


def test_metrics_accumulate_over_batches():
    metrics = RefSegMetrics()
    metrics.update(masks([1, 0]), masks([1, 1]))
    metrics.update(masks([1, 1]), masks([1, 1]))
    assert metrics.result()["oIoU"] == pytest.approx(3 / 4)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_config):
    ms.set_seed(5)
    net = CoupAlign.from_config(tiny_config)
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")
    save_checkpoint(net, path, append_dict={"epoch": 1, "step": 10})
    return net, path


def test_exported_mindir_equals_the_python_network(tmp_path, tiny_config, tiny_checkpoint):
    net, path = tiny_checkpoint
    config = tiny_config.copy()
    config.ckpt_path = path
    config.file_name = str(tmp_path / "tiny")
    config.export_batch_size = 2
    exported = run_export(config)
    assert exported.endswith(".mindir") and os.path.isfile(exported)
    rng = np.random.default_rng(0)
    image = ms.Tensor(rng.standard_normal((2, 3, config.image_size, config.image_size)).astype(np.float32))
    ids = ms.Tensor(rng.integers(5, config.vocab_size, (2, config.max_tokens)).astype(np.int32))
    mask = np.ones((2, config.max_tokens), np.int32)
    mask[1, 4:] = 0
    mask = ms.Tensor(mask)
    net.set_train(False)
    expected = net(image, ids, mask).asnumpy()
    graph = ms.nn.GraphCell(ms.load(exported))
    actual = graph(image, ids, mask).asnumpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert actual.shape == (2, 1, config.image_size, config.image_size)
    assert [tuple(t.shape) for t in example_inputs(config, 2)] == [(2, 3, 64, 64), (2, 12), (2, 12)]


def test_checkpoint_of_another_config_is_refused(tiny_config, tiny_checkpoint):
    _, path = tiny_checkpoint
    other = tiny_config.copy()
    other.decoder_dim = 16
    with pytest.raises(CheckpointError, match="does not fit.*mask_generator"):
        load_network_weights(CoupAlign.from_config(other), path)


def test_export_cli_fails_cleanly_on_a_foreign_checkpoint(tmp_path, tiny_checkpoint):
    _, path = tiny_checkpoint
    target = tmp_path / "model"
    result = subprocess.run([sys.executable, "export.py", "--config_path", TINY_CONFIG, "--ckpt_path", path,
                             "--decoder_dim", "16", "--file_name", str(target)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "does not fit" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_missing_checkpoint_is_named(tiny_config):
    with pytest.raises(CheckpointError, match="not_there.ckpt"):
        load_network_weights(CoupAlign.from_config(tiny_config), "not_there.ckpt")
