"""The contact sheet: the first sentence of the first refs of a split in evaluation order, with eval.py's
per-sample IoUs."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from model_utils.config import get_config
from src.commands.predict import overlay_mask
from src.data.dataset import eval_sample_ids
from src.data.synthetic import generate_synthetic
from src.tools.contact_sheet import BACKGROUND, GRID_COLUMNS, TILE_GAP, sample_pictures, write_contact_sheet
from tests.conftest import ROOT, TINY_CONFIG, ReferFiles
from tests.data.test_build_mindrecord import convert

ENV = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT)
# Of the untrained tiny networks, seed 4's predicts masks that overlap some of these samples' objects and
# miss others, so the IoUs differ from sample to sample (seed 5's, tiny_checkpoint's, predicts nothing here).
NETWORK_SEED = 4


def run(args):
    result = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def referring_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("sheet_data")
    generate_synthetic(str(root), num_images=40, seed=3, image_size=64)
    records = str(tmp_path_factory.mktemp("sheet_mindrecord"))
    convert(str(root), records)
    return {"root": str(root), "vocab": os.path.join(root, "vocab.txt"), "records": records}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_config):
    import mindspore as ms
    from src.checkpoint import save_checkpoint
    from src.models.coupalign import CoupAlign
    ms.set_seed(NETWORK_SEED)
    path = str(tmp_path_factory.mktemp("sheet_ckpt") / "untrained.ckpt")
    save_checkpoint(CoupAlign.from_config(tiny_config), path)
    return path


def common_flags(referring_set, checkpoint):
    return ["--config_path", TINY_CONFIG, "--mindrecord_dir", referring_set["records"], "--vocab_file",
            referring_set["vocab"], "--ckpt_path", checkpoint]


@pytest.fixture(scope="module")
def per_sample_ious(referring_set, checkpoint, tmp_path_factory):
    """{sent_id: IoU} of eval.py --per_sample_json on val."""
    path = tmp_path_factory.mktemp("sheet_eval") / "per_sample.jsonl"
    run([sys.executable, "eval.py", *common_flags(referring_set, checkpoint), "--eval_splits", "val",
         "--per_sample_json", str(path)])
    return {row["sent_id"]: row["iou"] for row in map(json.loads, path.read_text().splitlines())}


def first_sentence_per_ref(config, count):
    """sent_ids of the first sentence of each of the first `count` refs, in eval.py's order."""
    shown, seen = [], set()
    for ref_id, sent_id in zip(*(ids.tolist() for ids in eval_sample_ids(config, "val"))):
        if ref_id not in seen:
            seen.add(ref_id)
            shown.append(sent_id)
    return shown[:count]


def tile_size(image_size):
    """(height, width) of one tile: overlay_mask's picture of an image_size image with a caption."""
    square = np.zeros((image_size, image_size), bool)
    return overlay_mask(np.zeros((image_size, image_size, 3), np.uint8), square, "IoU 0.00  x").shape[:2]


def is_background(region):
    return bool((region == np.array(BACKGROUND, np.uint8)).all())


def test_command_writes_a_2x4_grid_of_the_first_val_refs(referring_set, checkpoint, per_sample_ious, tmp_path):
    output = tmp_path / "sheet.png"
    stdout = run([sys.executable, "-m", "src.tools.contact_sheet", *common_flags(referring_set, checkpoint),
                  "--output", str(output), "--num_examples", "8", "--eval_split", "val"])
    config = get_config(["--mindrecord_dir", referring_set["records"]], TINY_CONFIG)
    first_eight = first_sentence_per_ref(config, 8)
    expected_mean = np.mean([per_sample_ious[sent_id] for sent_id in first_eight])
    last_line = stdout.strip().splitlines()[-1]
    assert last_line.startswith(f"contact sheet of the first 8 val refs (their first sentence) written to {output}; "
                                "mean IoU ")
    assert float(last_line.rsplit(" ", 1)[1]) == pytest.approx(expected_mean, abs=1e-4)

    sheet = cv2.imread(str(output))
    height, width = tile_size(config.image_size)
    assert sheet.shape[1] == GRID_COLUMNS * (width + TILE_GAP) + TILE_GAP
    grid_height = 2 * (height + TILE_GAP) + TILE_GAP
    assert sheet.shape[0] > grid_height  # the legend strip is below the grid
    for row in range(2):
        top = TILE_GAP + row * (height + TILE_GAP)
        assert is_background(sheet[top - TILE_GAP:top, :])
        for column in range(GRID_COLUMNS):
            left = TILE_GAP + column * (width + TILE_GAP)
            assert is_background(sheet[top:top + height, left - TILE_GAP:left])
            assert not is_background(sheet[top:top + height, left:left + width]), (row, column)
    assert is_background(sheet[grid_height - TILE_GAP:grid_height, :])


def test_ious_and_order_are_those_of_eval(referring_set, checkpoint, per_sample_ious, tmp_path):
    """Ten refs: their samples span several eval batches (eval_batch_size 8)."""
    config = get_config(common_flags(referring_set, checkpoint)[2:] + ["--output", str(tmp_path / "ten.png")],
                        TINY_CONFIG)
    shown = write_contact_sheet(config, "val", 10)
    assert shown["sent_ids"] == first_sentence_per_ref(config, 10)
    assert len(set(shown["ref_ids"])) == 10
    assert len(set(np.round(shown["ious"], 6))) > 2, "the seeded network should hit some samples and miss others"
    assert shown["ious"] == pytest.approx([per_sample_ious[sent_id] for sent_id in shown["sent_ids"]], abs=1e-6)
    assert shown["mean_iou"] == pytest.approx(np.mean(shown["ious"]))
    height, width = tile_size(config.image_size)
    sheet = cv2.imread(shown["output"])
    assert sheet.shape[1] == GRID_COLUMNS * (width + TILE_GAP) + TILE_GAP
    assert sheet.shape[0] > 3 * (height + TILE_GAP) + TILE_GAP  # 10 tiles: three rows of four


def test_captions_are_the_raw_sentences_of_the_samples(referring_set):
    config = get_config(["--mindrecord_dir", referring_set["records"]], TINY_CONFIG)
    raw = {sentence["sent_id"]: sentence["raw"] for ref in ReferFiles(referring_set["root"]).refs
           for sentence in ref["sentences"]}
    pictures = sample_pictures(config, "val", 12)
    assert sorted(pictures) == sorted(first_sentence_per_ref(config, 12))
    assert {sent_id: sentence for sent_id, (_, sentence) in pictures.items()} == {sent_id: raw[sent_id]
                                                                                  for sent_id in pictures}
    assert all(image.shape == (config.image_size, config.image_size, 3) for image, _ in pictures.values())


def test_missing_checkpoint_is_one_line(referring_set, tmp_path):
    flags = common_flags(referring_set, str(tmp_path / "absent.ckpt"))
    result = subprocess.run([sys.executable, "-m", "src.tools.contact_sheet", *flags, "--output",
                             str(tmp_path / "sheet.png")], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: checkpoint not found: {tmp_path / 'absent.ckpt'}"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "sheet.png").exists()
