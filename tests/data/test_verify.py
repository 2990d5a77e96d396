"""Integrity of converted sets: the manifest, the cheap check at start, and python -m src.data.verify."""
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from model_utils.config import get_config
from src.data import dataset as dataset_module
from src.data import verify
from src.data.dataset import (DecodeError, LayoutError, create_dataset, encode_mask, find_mindrecord, index_path,
                              manifest_path, mindrecord_path, split_table)
from src.data.refer import Refer
from src.data.synthetic import generate_synthetic
from tests.conftest import ROOT, TINY_CONFIG
from tests.data.test_build_mindrecord import convert, set_files


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(str(root), num_images=40, seed=3, image_size=64, texture=True)
    return str(root)


@pytest.fixture(scope="module")
def converted(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("mindrecord")
    convert(synthetic_root, out, "--splits", "train,val")
    return str(out)


@pytest.fixture
def copied(converted, tmp_path):
    """A private copy of the converted sets, to damage."""
    return shutil.copytree(converted, str(tmp_path / "mr"))


def make_config(mindrecord_dir):
    return get_config([], TINY_CONFIG, overrides={"mindrecord_dir": mindrecord_dir})


def read_manifest(mindrecord_dir, split):
    with open(manifest_path(mindrecord_dir, "refcoco", "unc", split), encoding="utf-8") as handle:
        return json.load(handle)


def sha256_of(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def fix_manifest_checksum(mindrecord_dir, split, path):
    """Makes the manifest agree with a file damaged on purpose, so that only the decode check can see it."""
    manifest = read_manifest(mindrecord_dir, split)
    entry = next(entry for entry in manifest["files"] if entry["name"] == os.path.basename(path))
    entry["sha256"] = sha256_of(path)
    with open(manifest_path(mindrecord_dir, "refcoco", "unc", split), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)


def run_verify_cli(mindrecord_dir, *extra):
    command = [sys.executable, "-m", "src.data.verify", "--mindrecord_dir", mindrecord_dir, *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "GLOG_v": "3"})


def run_verify(mindrecord_dir, *extra):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = verify.main(["--mindrecord_dir", mindrecord_dir, *extra])
    return code, out.getvalue(), err.getvalue()


def overwrite(path, offset, data):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def image_file(synthetic_root, image_id):
    return os.path.join(synthetic_root, "images", f"COCO_train2014_{image_id:012d}.jpg")


def expected_name(refer, split, image_id):
    refs = sorted((ref for ref in refer.refs_of_split(split) if ref["image_id"] == image_id),
                  key=lambda ref: ref["ref_id"])
    samples = "; ".join(f"ref_id {ref['ref_id']}: sent_id " + ", ".join(str(s["sent_id"]) for s in ref["sentences"])
                        for ref in refs)
    return f"image_id {image_id} ({samples})"


def test_manifest_lists_every_file_with_its_size_and_sha256(converted, synthetic_root):
    refer = Refer(synthetic_root, "refcoco", "unc", os.path.join(synthetic_root, "images"))
    for split in ("train", "val"):
        manifest = read_manifest(converted, split)
        names = sorted(os.path.basename(path) for path in set_files(converted, f"refcoco_unc_{split}")) + \
            [f"refcoco_unc_{split}.index.npz"]
        assert sorted(entry["name"] for entry in manifest["files"]) == sorted(names)
        for entry in manifest["files"]:
            path = os.path.join(converted, entry["name"])
            assert entry["bytes"] == os.path.getsize(path)
            assert entry["sha256"] == sha256_of(path)
        counts = refer.split_counts(split)
        assert (manifest["rows"], manifest["refs"], manifest["sentences"]) == \
            (counts["images"], counts["refs"], counts["sentences"])
        assert (manifest["layout"], manifest["dataset"], manifest["split_by"], manifest["split"]) == \
            (3, "refcoco", "unc", split)
        assert manifest["sources"]["instances"]["bytes"] == os.path.getsize(refer.instances_path)
        assert manifest["sources"]["refs"]["bytes"] == os.path.getsize(refer.refs_path)
        assert manifest["sources"]["vocab"]["sha256"] == sha256_of(os.path.join(synthetic_root, "vocab.txt"))


def test_a_rerun_replaces_the_manifest_with_the_new_sets(synthetic_root, tmp_path):
    out = str(tmp_path)
    convert(synthetic_root, out, "--splits", "val", "--num_shards", "2")
    convert(synthetic_root, out, "--splits", "val")
    names = sorted(entry["name"] for entry in read_manifest(out, "val")["files"])
    assert names == ["refcoco_unc_val.index.npz", "refcoco_unc_val.mindrecord", "refcoco_unc_val.mindrecord.db"]
    assert split_table(make_config(out), "val")[1].image_ids.size == read_manifest(out, "val")["rows"]


@pytest.mark.parametrize("damage", ["truncated", "appended"])
def test_a_file_of_another_size_is_refused_before_mindspore_reads_it(copied, monkeypatch, damage):
    path = find_mindrecord(copied, "refcoco", "unc", "val")
    size = os.path.getsize(path)
    if damage == "truncated":
        os.truncate(path, size // 2)
    else:
        with open(path, "ab") as handle:
            handle.write(b"\0" * 100)

    def no_reading(*args, **kwargs):
        raise AssertionError("MindDataset opened a file of the wrong size")

    monkeypatch.setattr(dataset_module.ds, "MindDataset", no_reading)
    with pytest.raises(LayoutError) as info:
        create_dataset(make_config(copied), "val", training=False)
    message = str(info.value)
    assert "\n" not in message
    assert f"{path} is {os.path.getsize(path)} bytes, its manifest says {size}" in message
    assert "python -m src.data.verify" in message


def test_a_set_without_manifest_is_refused_with_the_reconvert_hint(copied):
    os.remove(manifest_path(copied, "refcoco", "unc", "val"))
    with pytest.raises(LayoutError, match="no manifest .*older converter.*reconvert it with: "
                                          "python -m src.data.build_mindrecord"):
        split_table(make_config(copied), "val")


def test_a_missing_shard_is_named(synthetic_root, tmp_path):
    out = str(tmp_path)
    convert(synthetic_root, out, "--splits", "val", "--num_shards", "2")
    missing = mindrecord_path(out, "refcoco", "unc", "val") + "1"
    os.remove(missing)
    with pytest.raises(LayoutError, match=f"{missing} is missing"):
        split_table(make_config(out), "val")


def test_verify_passes_a_clean_set(converted):
    code, out, err = run_verify(converted)
    assert code == 0, err
    for split in ("train", "val"):
        manifest = read_manifest(converted, split)
        assert (f"refcoco_unc_{split}: {manifest['rows']} images, {manifest['refs']} refs, "
                f"{manifest['sentences']} sentences, all intact (") in out
    assert "verified 2 set(s) in" in out and "error" not in err


def test_verify_checks_only_the_named_splits(converted):
    code, out, _ = run_verify(converted, "--splits", "val")
    assert code == 0 and "refcoco_unc_val:" in out and "refcoco_unc_train:" not in out


def test_random_bytes_in_the_data_are_a_checksum_error_not_a_crash(copied, synthetic_root):
    path = find_mindrecord(copied, "refcoco", "unc", "train")
    table = split_table(make_config(copied), "train")[1]
    with open(image_file(synthetic_root, int(table.image_ids[0])), "rb") as handle:
        data_start = open(path, "rb").read().find(handle.read())  # the first image: past the header
    size = os.path.getsize(path)
    block = 64 * 1024
    assert 0 < data_start and data_start + block <= size
    overwrite(path, data_start + (size - data_start - block) // 2, np.random.default_rng(0).bytes(block))
    assert os.path.getsize(path) == size
    result = run_verify_cli(copied)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert f"error: refcoco_unc_train: {path}: its sha256 differs from its manifest" in result.stderr
    assert "refcoco_unc_train: rows not read" in result.stderr
    assert "refcoco_unc_val: " in result.stdout and "all intact" in result.stdout


def test_bytes_damaged_in_place_stop_eval_at_start_in_one_line(copied, synthetic_root, tiny_checkpoint):
    checkpoint = tiny_checkpoint[1]
    """Same size, other bytes: the sha256 check at start names the file where MindSpore would segfault."""
    path = find_mindrecord(copied, "refcoco", "unc", "val")
    table = split_table(make_config(copied), "val")[1]
    with open(image_file(synthetic_root, int(table.image_ids[0])), "rb") as handle:
        data_start = open(path, "rb").read().find(handle.read())
    overwrite(path, data_start + 1024, np.random.default_rng(2).bytes(8192))
    result = subprocess.run([sys.executable, "eval.py", "--config_path", TINY_CONFIG, "--ckpt_path", checkpoint,
                             "--mindrecord_dir", copied, "--eval_splits", "val"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "GLOG_v": "3"})
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: its sha256 differs from its manifest")
    assert "python -m src.data.verify" in lines[0]
    # --data_check sizes trusts the bytes (sizes and counts only), as before the checksums
    sizes_only = get_config([], TINY_CONFIG, overrides={"mindrecord_dir": copied, "data_check": "sizes"})
    assert len(split_table(sizes_only, "val")[1].image_ids) == len(table.image_ids)


def test_a_garbled_stored_jpeg_is_named_by_its_row(copied, synthetic_root):
    refer = Refer(synthetic_root, "refcoco", "unc", os.path.join(synthetic_root, "images"))
    path = find_mindrecord(copied, "refcoco", "unc", "val")
    image_id = int(split_table(make_config(copied), "val")[1].image_ids[1])
    with open(image_file(synthetic_root, image_id), "rb") as handle:
        image = handle.read()
    start = open(path, "rb").read().find(image)
    assert start > 0 and len(image) > 2048
    overwrite(path, start + len(image) // 2 - 256, np.random.default_rng(1).bytes(512))
    fix_manifest_checksum(copied, "val", path)
    result = run_verify_cli(copied, "--splits", "val")
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert f"error: refcoco_unc_val: {expected_name(refer, 'val', image_id)}: the image is damaged" in result.stderr
    assert "sha256" not in result.stderr


def test_a_stored_mask_that_does_not_decode_is_named_by_its_ref(copied, synthetic_root):
    refer = Refer(synthetic_root, "refcoco", "unc", os.path.join(synthetic_root, "images"))
    path = find_mindrecord(copied, "refcoco", "unc", "val")
    table = split_table(make_config(copied), "val")[1]
    image_id = int(table.image_ids[0])
    ref = min((ref for ref in refer.refs_of_split("val") if ref["image_id"] == image_id),
              key=lambda ref: ref["ref_id"])
    mask = encode_mask(refer.ref_mask(ref))
    contents = open(path, "rb").read()
    assert contents.count(mask) == 1
    overwrite(path, contents.find(mask), bytes(len(mask)))
    fix_manifest_checksum(copied, "val", path)
    code, _, err = run_verify(copied, "--splits", "val")
    sentences = ", ".join(str(sentence["sent_id"]) for sentence in ref["sentences"])
    assert code == 1
    assert (f"error: refcoco_unc_val: image_id {image_id} (ref_id {ref['ref_id']}: sent_id {sentences}): "
            "cannot decode a mask") in err


def test_strict_decoding_reports_libjpeg_warnings(synthetic_root):
    with open(image_file(synthetic_root, 1), "rb") as handle:
        image = handle.read()
    middle = len(image) // 2
    garbled = image[:middle] + np.random.default_rng(0).bytes(512) + image[middle + 512:]
    native = verify.NativeStderr()
    try:
        verify.decode_image_strictly(image, 64, 64, native)
        with pytest.raises(DecodeError, match="the image is damaged: the decoder says 'Corrupt JPEG data"):
            verify.decode_image_strictly(garbled, 64, 64, native)
        with pytest.raises(DecodeError, match="the image is 64x64, the row says 48x64"):
            verify.decode_image_strictly(image, 64, 48, native)
    finally:
        native.close()


def test_a_set_without_manifest_fails_verify(copied):
    os.remove(manifest_path(copied, "refcoco", "unc", "val"))
    code, _, err = run_verify(copied)
    assert code == 1
    assert f"error: {index_path(copied, 'refcoco', 'unc', 'val')}: its set has no manifest" in err
