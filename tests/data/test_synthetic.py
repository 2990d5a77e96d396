"""Synthetic REFER-layout data: layout, determinism, discriminative sentences, weak category baseline,
non-square sizes, texture, workers."""
import filecmp
import json
import os
import pickle
import subprocess
import sys
from collections import defaultdict

import cv2
import numpy as np
import pytest

from model_utils.config import get_config
from src.data.refer import segmentation_to_mask
from src.data.synthetic import COLOURS, SHAPES, SPECIAL_TOKENS, generate_synthetic, image_file_name, parse_image_size
from src.data.tokenizer import build_tokenizer
from tests.conftest import ROOT, TINY_CONFIG, ReferFiles

POSITIONS = {"left": ("x", min), "leftmost": ("x", min), "right": ("x", max), "rightmost": ("x", max),
             "top": ("y", min), "bottom": ("y", max)}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(str(root), num_images=120, seed=11)
    return str(root)


@pytest.fixture(scope="module")
def refer(synthetic_root):
    return ReferFiles(synthetic_root)


def test_layout_and_vocab(synthetic_root, refer):
    assert os.path.isfile(os.path.join(synthetic_root, "refcoco", "instances.json"))
    assert os.path.isfile(os.path.join(synthetic_root, "refcoco", "refs(unc).p"))
    for image in refer.coco.dataset["images"]:
        assert image["file_name"] == image_file_name(image["id"])
        assert os.path.isfile(os.path.join(synthetic_root, "images", image["file_name"]))
    for ann in refer.coco.dataset["annotations"]:
        assert {"id", "image_id", "category_id", "segmentation", "bbox", "area"} <= set(ann)
        assert isinstance(ann["segmentation"], list) and ann["area"] > 0
    ref = refer.refs[0]
    assert {"ref_id", "ann_id", "image_id", "split", "category_id", "sent_ids", "sentences", "file_name"} <= set(ref)
    assert {"tokens", "raw", "sent_id", "sent"} <= set(ref["sentences"][0])
    with open(os.path.join(synthetic_root, "vocab.txt"), encoding="utf-8") as handle:
        vocab = handle.read().split("\n")[:-1]
    assert tuple(vocab[:5]) == SPECIAL_TOKENS
    assert len(vocab) == len(set(vocab)) <= get_config([], TINY_CONFIG).vocab_size


def test_every_sentence_tokenises_without_unknowns_within_tiny_max_tokens(synthetic_root, refer):
    tokenizer = build_tokenizer(os.path.join(synthetic_root, "vocab.txt"))
    max_tokens = get_config([], TINY_CONFIG).max_tokens
    sentences = [s["raw"] for ref in refer.refs for s in ref["sentences"]]
    for raw in sentences:
        assert "[UNK]" not in tokenizer.tokenize(raw), raw
        assert tokenizer.length(raw) <= max_tokens, raw
    assert any(raw.endswith(".") for raw in sentences)
    assert any(raw[0].isupper() for raw in sentences)
    assert any("," in raw for raw in sentences)
    counts = {len(ref["sentences"]) for ref in refer.refs}
    assert counts == {1, 2, 3}


def test_splits_are_by_image(refer):
    split_of_image = defaultdict(set)
    for ref in refer.refs:
        split_of_image[ref["image_id"]].add(ref["split"])
    assert all(len(splits) == 1 for splits in split_of_image.values())
    images = defaultdict(int)
    for image_id, splits in split_of_image.items():
        images[splits.pop()] += 1
    assert images["train"] > 0.6 * len(split_of_image)
    assert all(images[split] > 0 for split in ("val", "testA", "testB"))


def _centre(ann):
    x, y, w, h = ann["bbox"]
    return {"x": x + w / 2, "y": y + h / 2}


def resolve(sentence, anns):
    """Annotation ids that an attribute + position reading of the sentence picks."""
    words = sentence.lower().replace(",", " ").replace(".", " ").split()
    shape = next(word for word in words if word in SHAPES)
    candidates = [ann for ann in anns if SHAPES[ann["category_id"] - 1] == shape]
    colour = next((word for word in words if word in COLOURS), None)
    if colour:
        candidates = [ann for ann in candidates if ann["colour"] == colour]
    position = next((word for word in words if word in POSITIONS), None)
    if position and candidates:
        axis, pick = POSITIONS[position]
        best = pick(_centre(ann)[axis] for ann in candidates)
        candidates = [ann for ann in candidates if _centre(ann)[axis] == best]
    return [ann["id"] for ann in candidates]


def test_sentences_single_out_their_object(refer):
    for ref in refer.refs:
        anns = refer.coco.imgToAnns[ref["image_id"]]
        same_category = [ann for ann in anns if ann["category_id"] == ref["category_id"]]
        assert len(same_category) >= 2
        for sentence in ref["sentences"]:
            assert resolve(sentence["raw"], anns) == [ref["ann_id"]], sentence["raw"]


def test_position_words_are_needed_for_many_refs(refer):
    needs_position = 0
    for ref in refer.refs:
        anns = refer.coco.imgToAnns[ref["image_id"]]
        target = refer.coco.anns[ref["ann_id"]]
        same = [ann for ann in anns
                if ann["category_id"] == target["category_id"] and ann["colour"] == target["colour"]]
        needs_position += len(same) > 1
    assert needs_position > 0.25 * len(refer.refs)


def test_category_union_baseline_is_weak(refer):
    intersection = union = 0
    for split in ("val", "testA", "testB"):
        for ref in refer.refs_of_split(split):
            target = refer.ref_mask(ref) > 0
            image = refer.image_info(ref["image_id"])
            baseline = np.zeros_like(target)
            for ann in refer.coco.imgToAnns[ref["image_id"]]:
                if ann["category_id"] == ref["category_id"]:
                    baseline |= segmentation_to_mask(ann["segmentation"], image["height"], image["width"]) > 0
            weight = len(ref["sentences"])
            intersection += weight * (baseline & target).sum()
            union += weight * (baseline | target).sum()
    assert intersection / union < 0.6  # the oracle reaches 1.0, so >= 0.2 above the baseline is reachable


def test_objects_are_large_and_do_not_overlap(refer):
    for image_id, anns in refer.coco.imgToAnns.items():
        image = refer.image_info(image_id)
        masks = [segmentation_to_mask(ann["segmentation"], image["height"], image["width"]) for ann in anns]
        assert 2 <= len(masks) <= 4
        assert min(mask.sum() for mask in masks) >= 0.02 * image["height"] * image["width"]
        assert np.sum(masks, axis=0).max() == 1


def test_generation_is_deterministic(tmp_path):
    generate_synthetic(str(tmp_path / "a"), num_images=12, seed=4)
    generate_synthetic(str(tmp_path / "b"), num_images=12, seed=4)
    generate_synthetic(str(tmp_path / "c"), num_images=12, seed=5)
    names = ["refcoco/instances.json", "refcoco/refs(unc).p", "vocab.txt"] + \
        [f"images/{image_file_name(index)}" for index in range(1, 13)]
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)
    assert not mismatch and not errors
    assert not filecmp.cmp(tmp_path / "a" / "refcoco" / "instances.json", tmp_path / "c" / "refcoco" / "instances.json",
                           shallow=False)


def test_cli_writes_the_set(tmp_path):
    command = [sys.executable, "-m", "src.data.synthetic", "--out", str(tmp_path), "--images", "8",
               "--seed", "2", "--image_size", "80"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "8 images" in result.stdout
    with open(tmp_path / "refcoco" / "instances.json", encoding="utf-8") as handle:
        instances = json.load(handle)
    assert len(instances["images"]) == 8 and instances["images"][0]["width"] == 80
    with open(tmp_path / "refcoco" / "refs(unc).p", "rb") as handle:
        assert isinstance(pickle.load(handle), list)


def _set_files(num_images):
    return ["refcoco/instances.json", "refcoco/refs(unc).p", "vocab.txt"] + \
        [f"images/{image_file_name(index)}" for index in range(1, num_images + 1)]


def _same_sets(first, second, num_images):
    _, mismatch, errors = filecmp.cmpfiles(first, second, _set_files(num_images), shallow=False)
    return not mismatch and not errors


def test_parse_image_size():
    assert parse_image_size("640") == (640, 640)
    assert parse_image_size("640x480") == (640, 480)
    for bad in ("", "640x", "x480", "0", "64x48x2", "-5"):
        with pytest.raises(ValueError):
            parse_image_size(bad)


def test_explicit_defaults_give_the_default_set(tmp_path):
    generate_synthetic(str(tmp_path / "a"), num_images=8, seed=3)
    generate_synthetic(str(tmp_path / "b"), num_images=8, seed=3, image_size="64x64", texture=False, workers=2)
    assert _same_sets(tmp_path / "a", tmp_path / "b", 8)


@pytest.fixture(scope="module")
def wide_refer(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("wide"))
    generate_synthetic(root, num_images=60, seed=7, image_size="160x64")
    return ReferFiles(root)


def test_non_square_sizes_masks_and_positions(wide_refer):
    for image in wide_refer.coco.dataset["images"]:
        assert (image["width"], image["height"]) == (160, 64)
        anns = wide_refer.coco.imgToAnns[image["id"]]
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= 160 and y + h <= 64
            mask = segmentation_to_mask(ann["segmentation"], 64, 160)
            assert mask.shape == (64, 160) and mask.sum() == ann["area"]
    words = set()
    for ref in wide_refer.refs:
        anns = wide_refer.coco.imgToAnns[ref["image_id"]]
        for sentence in ref["sentences"]:
            assert resolve(sentence["raw"], anns) == [ref["ann_id"]], sentence["raw"]
            words.update(sentence["tokens"])
    assert {"left", "right", "top", "bottom"} <= words


def test_non_square_position_margin_is_a_share_of_each_axis(wide_refer):
    """A position word needs a gap above MARGIN of its own axis' extent (x: 16 px of 160, y: 6.4 px of 64)."""
    from src.data.synthetic import MARGIN
    extents = {"x": 160, "y": 64}
    for ref in wide_refer.refs:
        anns = wide_refer.coco.imgToAnns[ref["image_id"]]
        target = wide_refer.coco.anns[ref["ann_id"]]
        others = [ann for ann in anns if ann["category_id"] == target["category_id"] and ann is not target]
        for sentence in ref["sentences"]:
            position = next((word for word in sentence["tokens"] if word in POSITIONS), None)
            if position is None:
                continue
            axis, pick = POSITIONS[position]
            sign = -1 if pick is min else 1
            colour = next((word for word in sentence["tokens"] if word in COLOURS), None)
            rivals = [ann for ann in others if colour is None or ann["colour"] == colour]
            gap = min(sign * (_centre(target)[axis] - _centre(ann)[axis]) for ann in rivals)
            assert gap > MARGIN * extents[axis] - 1.0, sentence["raw"]  # bbox centres are within a pixel


def test_texture_jpegs_are_coco_sized(tmp_path):
    generate_synthetic(str(tmp_path), num_images=5, seed=1, image_size="640x480", texture=True)
    sizes = [os.path.getsize(tmp_path / "images" / image_file_name(index)) for index in range(1, 6)]
    assert 60_000 < np.mean(sizes) < 300_000, sizes
    refer = ReferFiles(str(tmp_path))
    for ann in refer.coco.dataset["annotations"]:
        image = cv2.imread(str(tmp_path / "images" / image_file_name(ann["image_id"])))[:, :, ::-1]
        mask = segmentation_to_mask(ann["segmentation"], 480, 640) > 0
        inner = cv2.erode(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        mean_colour = image[inner].mean(axis=0)
        nearest = min(COLOURS, key=lambda name: np.linalg.norm(mean_colour - COLOURS[name]))
        assert nearest == ann["colour"]


def test_workers_do_not_change_the_output(tmp_path):
    for workers in (1, 2):
        generate_synthetic(str(tmp_path / str(workers)), num_images=10, seed=2, image_size="96x72", texture=True,
                           workers=workers)
    assert _same_sets(tmp_path / "1", tmp_path / "2", 10)


def test_cli_non_square_texture_with_workers(tmp_path):
    command = [sys.executable, "-m", "src.data.synthetic", "--out", str(tmp_path), "--images", "6",
               "--image_size", "80x60", "--texture", "--workers", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "refcoco" / "instances.json", encoding="utf-8") as handle:
        image = json.load(handle)["images"][0]
    assert (image["width"], image["height"]) == (80, 60)
    assert cv2.imread(str(tmp_path / "images" / image["file_name"])).shape == (60, 80, 3)


def test_a_size_that_cannot_hold_the_objects_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "src.data.synthetic", "--out", str(tmp_path / "set"), "--images",
                             "4", "--image_size", "6"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "cannot place 2-4 separable objects in a 6x6 image" in result.stderr
    assert "Traceback" not in result.stderr
