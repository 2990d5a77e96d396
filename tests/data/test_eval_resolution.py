"""Evaluation at the network input and at each image's own size, against pycocotools' masks by hand."""
import json
import os

import cv2
import numpy as np
import pytest

import mindspore as ms

from model_utils.config import get_config
from src.data.dataset import create_dataset
from src.data.synthetic import generate_synthetic
from src.evaluation import RefSegMetrics, evaluate_split, format_table, resolutions_of
from tests.conftest import TINY_CONFIG, ReferFiles
from tests.data.test_build_mindrecord import convert

WIDTH, HEIGHT = 96, 72  # not the tiny model's 64 x 64 input, and not square
LARGE = (120, 80)  # every second image is enlarged to this size: batches of images of several sizes


class LeftHalfNet:
    """Logit +1 on the left half of the S x S input, -1 on the right: bilinearly resized to a W x H image
    (W even), the positive pixels are exactly its columns x < W / 2."""

    training = False

    def __init__(self, size):
        self.logits = np.where(np.arange(size) < size // 2, 1.0, -1.0).astype(np.float32)[None, :].repeat(size, 0)

    def set_train(self, mode):
        self.training = mode

    def __call__(self, image, input_ids, attention_mask):
        return ms.Tensor(np.broadcast_to(self.logits, (image.shape[0], 1) + self.logits.shape).copy())


def enlarge_every_second_image(root):
    """Rewrites the even image ids at LARGE: the JPEG resized, the polygons and sizes in instances.json scaled."""
    path = os.path.join(root, "refcoco", "instances.json")
    with open(path, encoding="utf-8") as handle:
        instances = json.load(handle)
    width, height = LARGE
    enlarged = {image["id"] for image in instances["images"] if image["id"] % 2 == 0}
    for image in instances["images"]:
        if image["id"] in enlarged:
            file_path = os.path.join(root, "images", image["file_name"])
            cv2.imwrite(file_path, cv2.resize(cv2.imread(file_path), (width, height), interpolation=cv2.INTER_AREA))
            image["width"], image["height"] = width, height
    for ann in instances["annotations"]:
        if ann["image_id"] in enlarged:
            ann["segmentation"] = [[value * (width / WIDTH if axis == 0 else height / HEIGHT)
                                    for index, value in enumerate(polygon) for axis in [index % 2]]
                                   for polygon in ann["segmentation"]]
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(instances, handle)


@pytest.fixture(scope="module")
def referring_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("resolution_data"))
    generate_synthetic(root, num_images=30, seed=4, image_size=f"{WIDTH}x{HEIGHT}")
    enlarge_every_second_image(root)
    records = str(tmp_path_factory.mktemp("resolution_mindrecord"))
    convert(root, records, "--splits", "val")
    return root, get_config([], TINY_CONFIG, overrides={"mindrecord_dir": records, "eval_batch_size": 3})


def expected_metrics(refer, resize_to_input):
    """Metrics of LeftHalfNet over val, every sentence, from pycocotools' masks at each image's size."""
    metrics = RefSegMetrics()
    size = 64
    input_left = np.zeros((size, size), bool)
    input_left[:, :size // 2] = True
    sizes = set()
    for ref in sorted(refer.refs_of_split("val"), key=lambda ref: ref["ref_id"]):
        target = refer.ref_mask(ref).astype(bool)
        height, width = target.shape
        sizes.add((width, height))
        if resize_to_input:
            rows = (np.arange(size) * height // size)[:, None]  # nearest, as cv2.INTER_NEAREST samples
            cols = (np.arange(size) * width // size)[None, :]
            pair = (input_left, target[rows, cols])
        else:
            left = np.zeros((height, width), bool)
            left[:, :width // 2] = True
            pair = (left, target)
        for _ in ref["sentences"]:
            metrics.update(pair[0][None], pair[1][None])
    assert sizes == {(WIDTH, HEIGHT), LARGE}
    return metrics.result()


def test_both_resolutions_equal_hand_computed_metrics(referring_set):
    root, config = referring_set
    refer = ReferFiles(root)
    data = create_dataset(config, "val", training=False, with_ids=True, original_masks=True)
    results = evaluate_split(LeftHalfNet(config.image_size), data, resolutions=resolutions_of("both"))
    assert set(results) == {"input", "original"}
    for resolution, resize in (("input", True), ("original", False)):
        expected = expected_metrics(refer, resize)
        assert results[resolution]["num_samples"] == expected["num_samples"] > 0
        for key, value in expected.items():
            assert results[resolution][key] == pytest.approx(value, abs=1e-12), (resolution, key)
    assert results["input"]["oIoU"] != pytest.approx(results["original"]["oIoU"])  # the protocols do differ here
    table = format_table({"val": results})
    assert "| val (input) |" in table and "| val (original) |" in table
    for resolution in ("input", "original"):  # both = the two single runs
        single = create_dataset(config, "val", training=False, with_ids=True, original_masks=resolution == "original")
        assert evaluate_split(LeftHalfNet(config.image_size), single, resolutions=(resolution,)) == results[resolution]


def test_one_resolution_keeps_the_flat_result(referring_set):
    _, config = referring_set
    data = create_dataset(config, "val", training=False, with_ids=True, original_masks=True)
    result = evaluate_split(LeftHalfNet(config.image_size), data, resolutions=resolutions_of("original"))
    assert "oIoU" in result and "original" not in result


def test_unknown_resolution_is_refused():
    with pytest.raises(ValueError, match="eval_resolution must be one of input, original, both, got 'native'"):
        resolutions_of("native")
