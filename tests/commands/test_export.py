"""MINDIR export equal to the Python network; a foreign checkpoint fails the CLI cleanly."""
import os
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms

from src.commands.export import example_inputs, run_export
from src.commands.predict import PredictError, build_predictor, mindir_input_shapes
from tests.conftest import ROOT, TINY_CONFIG, make_batch


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
    # The batch axis is free: the same file runs 1 and 3 images.
    assert mindir_input_shapes(exported) == [(None, 3, 64, 64), (None, 12), (None, 12)]
    for batch in (1, 3):
        image, ids, mask, _ = make_batch(config, batch=batch, seed=batch)
        np.testing.assert_allclose(graph(image, ids, mask).asnumpy(), net(image, ids, mask).asnumpy(),
                                   rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def fixed_batch_mindir(tmp_path_factory):
    """A MINDIR with CoupAlign's input names at fixed shapes: image (2, 3, 64, 64), ids and mask (2, 12)."""
    class Inputs(ms.nn.Cell):
        def construct(self, image, input_ids, attention_mask):
            return image.sum() + (input_ids + attention_mask).sum()

    path = str(tmp_path_factory.mktemp("mindir") / "fixed.mindir")
    ms.export(Inputs(), ms.Tensor(np.zeros((2, 3, 64, 64), np.float32)), ms.Tensor(np.zeros((2, 12), np.int32)),
              ms.Tensor(np.zeros((2, 12), np.int32)), file_name=path, file_format="MINDIR")
    return path


@pytest.mark.parametrize("override, message", [
    ({}, None),
    ({"image_size": 480}, "fixed.mindir takes image (2, 3, 64, 64) but --image_size is 480"),
    ({"max_tokens": 20}, "fixed.mindir takes input_ids (2, 12) but --max_tokens is 20"),
])
def test_predictor_checks_the_mindir_input_shapes(fixed_batch_mindir, tiny_config, override, message):
    config = tiny_config.copy()
    config.update({"mindir": fixed_batch_mindir, "export_batch_size": 1}, **override)  # any batch fits: padded
    if message is None:
        assert isinstance(build_predictor(config), ms.nn.GraphCell)
        return
    with pytest.raises(PredictError) as caught:
        build_predictor(config)
    assert str(caught.value) == message


def test_predictor_refuses_a_file_that_is_not_a_mindir(tmp_path, tiny_config):
    path = tmp_path / "model.mindir"
    path.write_bytes(b"not a model")
    config = tiny_config.copy()
    config.mindir = str(path)
    with pytest.raises(PredictError, match="is not a MINDIR file"):
        build_predictor(config)


def test_export_cli_fails_cleanly_on_a_foreign_checkpoint(tmp_path, tiny_checkpoint):
    _, path = tiny_checkpoint
    target = tmp_path / "model"
    result = subprocess.run([sys.executable, "export.py", "--config_path", TINY_CONFIG, "--ckpt_path", path,
                             "--decoder_dim", "16", "--file_name", str(target)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "does not fit" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())
