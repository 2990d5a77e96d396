"""predict.py for real use: several sentences on one image, lists of images, the outputs of every query."""
import json
import os

import cv2
import numpy as np
import pytest

from model_utils.config import get_config
from src.commands.predict import PredictError, predict
from src.data.synthetic import generate_synthetic
from tests.conftest import TINY_CONFIG

SENTENCES = ["the red circle", "the green square on the left", "the triangle at the top"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_data")
    generate_synthetic(str(root), num_images=4, seed=2, image_size="96x72")
    return root


def config_of(tiny_checkpoint, images, *args):
    return get_config(["--ckpt_path", tiny_checkpoint[1], "--vocab_file", str(images / "vocab.txt"), *args],
                      TINY_CONFIG)


def image_path(images, index):
    return str(images / "images" / f"COCO_train2014_{index:012d}.jpg")


def one_at_a_time(tiny_checkpoint, images, image, sentence, output):
    return predict(config_of(tiny_checkpoint, images, "--image", image, "--sentence", sentence, "--output",
                             str(output)))[0]


def read_records(folder):
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_several_sentences_equal_one_at_a_time_calls(tiny_checkpoint, images, tmp_path, tiny_config):
    image = image_path(images, 1)
    flags = ["--image", image, "--predict_dir", str(tmp_path / "out")]
    for sentence in SENTENCES:
        flags += ["--sentence", sentence]
    masks = predict(config_of(tiny_checkpoint, images, *flags))
    records = read_records(tmp_path / "out")
    assert [record["sentence"] for record in records] == SENTENCES
    height, width = cv2.imread(image).shape[:2]
    for index, (sentence, mask, record) in enumerate(zip(SENTENCES, masks, records)):
        single = one_at_a_time(tiny_checkpoint, images, image, sentence, tmp_path / f"single{index}.png")
        assert single.shape == (height, width) and np.array_equal(mask, single), sentence
        stored = cv2.imread(record["mask"], cv2.IMREAD_GRAYSCALE)
        assert stored.shape == (height, width) and set(np.unique(stored)) <= {0, 255}
        assert np.array_equal(stored > 0, mask)
        assert record["mask_area"] == int(mask.sum())
        assert record["mask_fraction"] == pytest.approx(mask.mean(), abs=1e-6)
        assert len(record["sma_weights"]) == tiny_config.num_queries
        assert sum(record["sma_weights"]) == pytest.approx(1.0, abs=1e-4)
        if record["mask_area"]:
            assert 0.5 < record["mean_foreground_probability"] <= 1.0
        assert os.path.isfile(record["overlay"])


@pytest.mark.slow
def test_an_input_list_covers_several_images_in_its_order(tiny_checkpoint, images, tmp_path):
    entries = [(2, SENTENCES[0]), (1, SENTENCES[1]), (2, SENTENCES[2])]
    listing = images / "queries.jsonl"  # relative image paths: from the list's folder
    listing.write_text("".join(json.dumps({"image": f"images/COCO_train2014_{index:012d}.jpg", "sentence": text})
                               + "\n" for index, text in entries) + "\n")
    masks = predict(config_of(tiny_checkpoint, images, "--input_list", str(listing), "--predict_dir",
                              str(tmp_path / "out")))
    records = read_records(tmp_path / "out")
    assert [(record["image"], record["sentence"]) for record in records] == [
        (os.path.join(str(images), f"images/COCO_train2014_{index:012d}.jpg"), text) for index, text in entries]
    for (index, text), mask in zip(entries, masks):
        single = one_at_a_time(tiny_checkpoint, images, image_path(images, index), text, tmp_path / "single.png")
        assert np.array_equal(mask, single)


@pytest.mark.parametrize("lines, message", [
    (['{"image": "a.jpg"}'], r"queries.jsonl line 1: expected a JSON object with \"image\" and \"sentence\""),
    (["", "not json"], "queries.jsonl line 2: expected a JSON object"),
    (['{"image": "missing.jpg", "sentence": "the red one"}'], "image not found: .*missing.jpg"),
    (['{"image": "images/COCO_train2014_000000000001.jpg", "sentence": "  "}'], "query 1 .* has an empty sentence"),
])
def test_a_bad_input_list_is_named_before_any_output(tiny_checkpoint, images, tmp_path, lines, message):
    listing = images / "queries.jsonl"
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(PredictError, match=message):
        predict(config_of(tiny_checkpoint, images, "--input_list", str(listing), "--predict_dir",
                          str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_sentences_file_adds_to_the_sentence_flag(tiny_checkpoint, images, tmp_path):
    sentences_file = tmp_path / "sentences.txt"
    sentences_file.write_text("\n".join(SENTENCES[1:]) + "\n\n")
    predict(config_of(tiny_checkpoint, images, "--image", image_path(images, 3), "--sentence", SENTENCES[0],
                      "--sentences_file", str(sentences_file), "--predict_dir", str(tmp_path / "out")))
    assert [record["sentence"] for record in read_records(tmp_path / "out")] == SENTENCES
