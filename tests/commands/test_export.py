"""MINDIR export equal to the Python network; a foreign checkpoint fails the CLI cleanly."""
import os
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms

from src.commands.export import example_inputs, run_export
from tests.conftest import ROOT, TINY_CONFIG


@pytest.mark.slow
@pytest.mark.e2e
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


def test_export_cli_fails_cleanly_on_a_foreign_checkpoint(tmp_path, tiny_checkpoint):
    _, path = tiny_checkpoint
    target = tmp_path / "model"
    result = subprocess.run([sys.executable, "export.py", "--config_path", TINY_CONFIG, "--ckpt_path", path,
                             "--decoder_dim", "16", "--file_name", str(target)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "does not fit" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())
