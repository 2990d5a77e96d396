"""The miss analysis: its classes on hand-made masks; on a converted set, every object of the image (refs or
not, per pycocotools) and counts that agree with eval's metrics."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from model_utils.config import get_config
from src.data.refer import Refer
from src.data.synthetic import generate_synthetic
from src.tools.miss_analysis import ImageObjects, analyse, classify_miss
from tests.conftest import ROOT, TINY_CONFIG
from tests.data.test_build_mindrecord import convert

SIZE = 16


def box(top, left, height, width):
    mask = np.zeros((SIZE, SIZE), bool)
    mask[top:top + height, left:left + width] = True
    return mask


TARGET = box(2, 2, 4, 4)        # 16 pixels
SAME = box(10, 2, 4, 4)         # another object of the target's category
OTHER = box(2, 10, 4, 4)        # an object of another category
OBJECTS = ([SAME, OTHER], [True, False])


@pytest.mark.parametrize("pred, expected", [
    (TARGET, "good"),
    (box(2, 2, 4, 3), "rough"),                                # IoU 12/16
    (np.zeros((SIZE, SIZE), bool), "empty"),
    (SAME, "wrong_same_category"),
    (box(2, 10, 4, 3), "wrong_other_category"),                # IoU 0.75 with OTHER, 0 with the target
    (box(2, 2, 4, 12), "merged"),                              # all of the target, a third of the prediction
    (box(2, 2, 2, 2), "partial"),                              # a quarter of the target, all on it
    (box(0, 0, 16, 16) & ~TARGET | box(2, 2, 1, 1), "scattered"),  # background almost everywhere
])
def test_each_class_on_hand_made_masks(pred, expected):
    assert classify_miss(pred, TARGET, *OBJECTS) == expected


def test_a_prediction_on_two_objects_is_no_wrong_object():
    """IoU 0.5 with SAME is not above the threshold: the prediction covers it and as much of OTHER."""
    assert classify_miss(SAME | OTHER, TARGET, *OBJECTS) == "scattered"


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("miss_data")
    generate_synthetic(str(root), num_images=40, seed=3, image_size=64)
    return str(root)


@pytest.fixture(scope="module")
def referring_set(synthetic_root, tmp_path_factory):
    records = str(tmp_path_factory.mktemp("miss_mindrecord"))
    convert(synthetic_root, records)
    return {"root": synthetic_root, "records": records}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_config):
    """An untrained tiny network whose predictions on this set hit some samples and miss others (the contact
    sheet's test uses the same seed on the same set)."""
    import mindspore as ms
    from src.checkpoint import save_checkpoint
    from src.models.coupalign import CoupAlign
    ms.set_seed(4)
    path = str(tmp_path_factory.mktemp("miss_ckpt") / "untrained.ckpt")
    save_checkpoint(CoupAlign.from_config(tiny_config), path)
    return path


def test_every_object_of_the_image_is_compared_refs_or_not(synthetic_root):
    root = synthetic_root
    refer = Refer(root, "refcoco", "unc")
    objects = ImageObjects(refer, "val", 64)
    coco = COCO(os.path.join(root, "refcoco", "instances.json"))
    without_ref = 0
    for ref_id, ref in objects.refs.items():
        masks, same = objects.others(ref_id)
        ann_ids = [ann_id for ann_id in coco.getAnnIds(imgIds=[ref["image_id"]]) if ann_id != ref["ann_id"]]
        assert len(masks) == len(ann_ids)
        expected = sorted(cv2.resize(coco.annToMask(coco.anns[ann_id]), (64, 64), interpolation=cv2.INTER_NEAREST)
                          .sum() for ann_id in ann_ids)
        assert sorted(int(mask.sum()) for mask in masks) == expected
        assert sum(same) == sum(coco.anns[ann_id]["category_id"] == ref["category_id"] for ann_id in ann_ids)
        referred = {other["ann_id"] for other in refer.refs if other["image_id"] == ref["image_id"]}
        without_ref += sum(ann_id not in referred for ann_id in ann_ids)
    assert without_ref > 0, "the set should hold objects without a ref, which the MindRecord lacks"


@pytest.mark.slow
def test_counts_agree_with_eval(referring_set, checkpoint, tmp_path):
    """Over the val split the classes count every sample once; good + rough are prec@0.5, good is prec@0.9."""
    from src.commands.eval import run_eval
    flags = ["--mindrecord_dir", referring_set["records"], "--vocab_file",
             os.path.join(referring_set["root"], "vocab.txt"), "--ckpt_path", checkpoint,
             "--refer_data_root", referring_set["root"]]
    result_json = tmp_path / "misses.json"
    result = analyse(get_config(flags + ["--result_json", str(result_json)], TINY_CONFIG), "val", examples=2)
    metrics = run_eval(get_config(flags + ["--eval_splits", "val"], TINY_CONFIG))["val"]
    classes = result["classes"]
    assert result["num_samples"] == metrics["num_samples"]
    assert sum(entry["count"] for entry in classes.values()) == metrics["num_samples"]
    assert result["oIoU"] == pytest.approx(metrics["oIoU"], abs=1e-6)
    n = metrics["num_samples"]
    assert (classes["good"]["count"] + classes["rough"]["count"]) / n == pytest.approx(metrics["prec@0.5"])
    assert classes["good"]["count"] / n == pytest.approx(metrics["prec@0.9"])
    assert all(len(entry["examples"]) == min(2, entry["count"]) for entry in classes.values())
    assert json.loads(result_json.read_text())["val"]["num_samples"] == n
    assert sum(entry["count"] > 0 for entry in classes.values()) >= 2, "the seeded network should vary"


@pytest.mark.slow
def test_command_names_a_missing_refer_root(referring_set, tmp_path):
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-m", "src.tools.miss_analysis", "--config_path", TINY_CONFIG,
                             "--mindrecord_dir", referring_set["records"], "--ckpt_path", str(tmp_path / "x.ckpt")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --refer_data_root is needed")
