"""REFER -> MindRecord conversion on the synthetic set: content, counts, sharding, bad input."""
import contextlib
import glob
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import mindspore.dataset as ds
from pycocotools.coco import COCO

from model_utils.config import get_config
from src.data import build_mindrecord
from src.data.build_mindrecord import DataError, build
from src.data.dataset import (LAYOUT_VERSION, decode_mask_bits, find_mindrecord, first_mindrecord_file, index_path,
                              load_split_table, manifest_path, mindrecord_path, ref_mask_bytes)
from src.data.refer import Refer, ReferError, load_refs_pickle
from src.data.synthetic import generate_synthetic
from src.data.tokenizer import encode_sentence
from tests.conftest import ROOT, TINY_CONFIG

COLUMNS = ["image_id", "height", "width", "image", "masks", "mask_ends", "ref_ids", "sentences"]


def convert_args(root, out, *extra):
    return ["--refer_data_root", str(root), "--image_root", os.path.join(root, "images"),
            "--vocab_file", os.path.join(root, "vocab.txt"), "--mindrecord_dir", str(out), *extra]


def convert(root, out, *extra):
    with contextlib.redirect_stdout(io.StringIO()):
        return build(get_config(convert_args(root, out, *extra), TINY_CONFIG))


def read_rows(first_file):
    data = ds.MindDataset(first_file, columns_list=COLUMNS, shuffle=False)
    return list(data.create_dict_iterator(output_numpy=True, num_epochs=1))


def read_table(out, split):
    return load_split_table(find_mindrecord(out, "refcoco", "unc", split), index_path(out, "refcoco", "unc", split),
                            manifest_path(out, "refcoco", "unc", split), "reconvert")


def copy_synthetic(source, target):
    shutil.copytree(source, target)
    return str(target)


def set_files(mindrecord_dir, name):
    return sorted(glob.glob(os.path.join(str(mindrecord_dir), f"{name}.mindrecord*")))


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(str(root), num_images=40, seed=3)
    return str(root)


@pytest.fixture(scope="module")
def converted(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("mindrecord")
    stats = convert(synthetic_root, out, "--num_shards", "2")
    return str(out), stats


@pytest.fixture(scope="module")
def refer(synthetic_root):
    return Refer(synthetic_root, "refcoco", "unc", os.path.join(synthetic_root, "images"))


def test_every_split_is_converted(converted, refer):
    out, stats = converted
    assert sorted(stats) == sorted(refer.splits()) == sorted(["train", "val", "testA", "testB"])
    for split in stats:
        base = mindrecord_path(out, "refcoco", "unc", split)
        assert first_mindrecord_file(base) == base + "0"
        assert os.path.isfile(base + "1") and os.path.isfile(base + "1.db")
    assert not glob.glob(os.path.join(out, ".*tmp*"))


def test_rows_hold_masks_images_and_tokens(converted, refer, synthetic_root):
    out, _ = converted
    coco = COCO(os.path.join(synthetic_root, "refcoco", "instances.json"))
    vocab = os.path.join(synthetic_root, "vocab.txt")
    for split in refer.splits():
        rows = read_rows(find_mindrecord(out, "refcoco", "unc", split))
        table = read_table(out, split)
        refs = sorted(refer.refs_of_split(split), key=lambda ref: (ref["image_id"], ref["ref_id"]))
        assert [int(row["image_id"]) for row in rows] == sorted({ref["image_id"] for ref in refs})
        assert table.image_ids.tolist() == [int(row["image_id"]) for row in rows]
        assert table.ref_ids.tolist() == [ref["ref_id"] for ref in refs]
        assert table.sent_ids.tolist() == [sentence["sent_id"] for ref in refs for sentence in ref["sentences"]]
        for row_number, row in enumerate(rows):
            image_refs = [ref for ref in refs if ref["image_id"] == int(row["image_id"])]
            assert row["ref_ids"].tolist() == [ref["ref_id"] for ref in image_refs]
            image = coco.imgs[int(row["image_id"])]
            assert (int(row["height"]), int(row["width"])) == (image["height"], image["width"])
            with open(os.path.join(synthetic_root, "images", image["file_name"]), "rb") as handle:
                assert row["image"].tobytes() == handle.read()
            assert len(row["mask_ends"]) == len(image_refs) and row["mask_ends"][-1] == len(row["masks"].tobytes())
            for slot, ref in enumerate(image_refs):
                mask = decode_mask_bits(ref_mask_bytes(row["masks"], row["mask_ends"], slot),
                                        image["height"], image["width"])
                np.testing.assert_array_equal(mask, coco.annToMask(coco.anns[ref["ann_id"]]))
                entry = table.ref_ids.tolist().index(ref["ref_id"])
                assert (table.ref_images[entry], table.ref_slots[entry]) == (row_number, slot)
            assert json.loads(str(row["sentences"])) == [sentence["raw"] for ref in image_refs
                                                         for sentence in ref["sentences"]]
        for entry, ref in enumerate(refs):
            for sentence in ref["sentences"]:
                position = table.sent_ids.tolist().index(sentence["sent_id"])
                assert table.sent_refs[position] == entry
                ids, attention = encode_sentence(vocab, sentence["raw"], 12)
                assert table.input_ids.dtype == np.int32 and table.input_ids[position].tolist() == ids.tolist()
                assert table.attention_mask[position].tolist() == attention.tolist()


def test_index_carries_the_layout_version(converted):
    out, _ = converted
    with np.load(index_path(out, "refcoco", "unc", "val")) as arrays:
        assert int(arrays["layout"]) == LAYOUT_VERSION == 3


def test_summary_counts_equal_refer(converted, refer):
    out, stats = converted
    for split, split_stats in stats.items():
        counts = refer.split_counts(split)
        assert (len(split_stats.refs), split_stats.sentences, len(split_stats.images)) == \
            (counts["refs"], counts["sentences"], counts["images"])
        assert ds.MindDataset(find_mindrecord(out, "refcoco", "unc", split)).get_dataset_size() == counts["images"]
        table = read_table(out, split)
        assert (len(table.ref_ids), len(table.sent_ids)) == (counts["refs"], counts["sentences"])


@pytest.mark.parametrize("num_shards", [2, 3, 5])
def test_sharded_reading_returns_every_row_once(converted, num_shards):
    out, _ = converted
    first = find_mindrecord(out, "refcoco", "unc", "train")
    total = ds.MindDataset(first).get_dataset_size()
    padding = (-total) % num_shards
    seen = []
    for shard_id in range(num_shards):
        data = ds.MindDataset(first, columns_list=["image_id"], shuffle=False, num_shards=num_shards,
                              shard_id=shard_id, padded_sample={"image_id": -1}, num_padded=padding)
        seen += [int(row["image_id"]) for row in data.create_dict_iterator(output_numpy=True, num_epochs=1)]
    real = [image_id for image_id in seen if image_id >= 0]
    assert len(real) == total and len(set(real)) == total


def test_conversion_is_deterministic(synthetic_root, converted, tmp_path):
    out, _ = converted
    convert(synthetic_root, tmp_path, "--num_shards", "2", "--splits", "val")
    first_rows = read_rows(find_mindrecord(out, "refcoco", "unc", "val"))
    second_rows = read_rows(find_mindrecord(str(tmp_path), "refcoco", "unc", "val"))
    assert len(first_rows) == len(second_rows)
    for left, right in zip(first_rows, second_rows):
        for column in COLUMNS:
            assert np.asarray(left[column]).tobytes() == np.asarray(right[column]).tobytes(), column
    for name in ("refcoco_unc_val.mindrecord0", "refcoco_unc_val.mindrecord1", "refcoco_unc_val.index.npz",
                 "refcoco_unc_val.manifest.json"):
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(tmp_path, name), "rb") as b:
            assert a.read() == b.read()


def test_cli_converts_and_prints_counts(synthetic_root, refer, tmp_path):
    out = tmp_path / "mr"
    command = [sys.executable, "-m", "src.data.build_mindrecord", "--config_path", TINY_CONFIG,
               *convert_args(synthetic_root, out, "--splits", "val,testB")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for split in ("val", "testB"):
        counts = refer.split_counts(split)
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"refcoco_unc_{split}:"))
        assert f"{counts['refs']} refs, {counts['sentences']} sentences, {counts['images']} images" in line
        assert os.path.isfile(mindrecord_path(str(out), "refcoco", "unc", split) + ".db")
        assert os.path.isfile(index_path(str(out), "refcoco", "unc", split))
    assert not set_files(out, "refcoco_unc_train")


def test_cli_missing_image_fails_naming_it(synthetic_root, refer, tmp_path):
    root = copy_synthetic(synthetic_root, tmp_path / "data")
    ref = refer.refs_of_split("val")[0]
    image_file = refer.image_path(ref["image_id"]).replace(synthetic_root, root)
    os.remove(image_file)
    out = tmp_path / "mr"
    command = [sys.executable, "-m", "src.data.build_mindrecord", "--config_path", TINY_CONFIG,
               *convert_args(root, out, "--splits", "val")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "image not found" in result.stderr and image_file in result.stderr
    assert not set_files(out, "refcoco_unc_val")


def test_cli_unknown_key_fails(tmp_path):
    command = [sys.executable, "-m", "src.data.build_mindrecord", "--no_such_key", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no_such_key" in result.stderr


def _corrupt(path, kind):
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[:len(data) // 2] if kind == "truncated" else b"this is not a jpeg" * 20)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_image_stops_conversion(synthetic_root, refer, tmp_path, kind):
    root = copy_synthetic(synthetic_root, tmp_path / "data")
    ref = refer.refs_of_split("val")[-1]
    image_file = refer.image_path(ref["image_id"]).replace(synthetic_root, root)
    _corrupt(image_file, kind)
    out = tmp_path / "mr"
    with pytest.raises(DataError, match="cannot decode image") as info:
        convert(root, out, "--splits", "val")
    assert image_file in str(info.value)
    assert not set_files(out, "refcoco_unc_val")
    assert not glob.glob(os.path.join(str(out), ".*"))


def test_skip_bad_reports_skipped_samples(synthetic_root, refer, tmp_path):
    root = copy_synthetic(synthetic_root, tmp_path / "data")
    bad = refer.refs_of_split("val")[0]
    _corrupt(refer.image_path(bad["image_id"]).replace(synthetic_root, root), "garbage")
    out = tmp_path / "mr"
    stats = convert(root, out, "--splits", "val", "--skip_bad")["val"]
    bad_refs = [ref for ref in refer.refs_of_split("val") if ref["image_id"] == bad["image_id"]]
    bad_sentences = sorted(s["sent_id"] for ref in bad_refs for s in ref["sentences"])
    assert stats.skipped_counts() == (len(bad_refs), len(bad_sentences), 1)
    counts = refer.split_counts("val")
    assert stats.sentences == counts["sentences"] - len(bad_sentences)
    report = (out / "refcoco_unc_val_skipped.txt").read_text().splitlines()
    assert sorted(int(line.split("\t")[0]) for line in report[1:]) == bad_sentences
    rows = read_rows(find_mindrecord(str(out), "refcoco", "unc", "val"))
    assert len(rows) == counts["images"] - 1 == len(stats.images)
    assert bad["image_id"] not in {int(row["image_id"]) for row in rows}
    table = read_table(str(out), "val")
    assert len(table.sent_ids) == stats.sentences and not set(table.sent_ids.tolist()) & set(bad_sentences)


class _Marker:
    """Pickles to a call that would create a marker file when unpickled."""

    def __init__(self, path, how):
        self.path = path
        self.how = how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.path}",))
        return (open, (self.path, "w"))


@pytest.mark.parametrize("how", ["system", "open"])
def test_malicious_refs_pickle_is_refused_without_running(synthetic_root, tmp_path, how):
    root = copy_synthetic(synthetic_root, tmp_path / "data")
    marker = tmp_path / "marker"
    refs_path = os.path.join(root, "refcoco", "refs(unc).p")
    with open(refs_path, "rb") as handle:
        refs = pickle.load(handle)
    refs[0]["sentences"][0]["raw"] = _Marker(str(marker), how)
    with open(refs_path, "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    with pytest.raises(ReferError, match="refused") as info:
        Refer(root, "refcoco", "unc", os.path.join(root, "images"))
    assert refs_path in str(info.value)
    assert not marker.exists()
    out = tmp_path / "mr"
    with pytest.raises(ReferError):
        convert(root, out)
    assert not marker.exists()
    assert not glob.glob(os.path.join(str(out), "*.mindrecord*"))


def _py2_pickle(value):
    """Protocol-2 bytes as Python 2 writes them: str as (SHORT_)BINSTRING, not unicode."""
    if isinstance(value, dict):
        body = b"}(" + b"".join(_py2_pickle(key) + _py2_pickle(item) for key, item in value.items()) + b"u"
        return body
    if isinstance(value, list):
        return b"](" + b"".join(_py2_pickle(item) for item in value) + b"e"
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):
        return b"J" + struct.pack("<i", value)
    if isinstance(value, float):
        return b"G" + struct.pack(">d", value)
    if isinstance(value, str):
        data = value.encode("utf-8")
        if len(data) < 256:
            return b"U" + bytes([len(data)]) + data
        return b"T" + struct.pack("<i", len(data)) + data
    if value is None:
        return b"N"
    raise TypeError(type(value))


def test_python2_refs_pickle_is_read_with_utf8_text(tmp_path):
    refs = [{"ref_id": 7, "ann_id": 70, "image_id": 1, "split": "train", "category_id": 1, "sent_ids": [0],
             "sentences": [{"tokens": ["café"], "raw": "Café on the left", "sent_id": 0, "sent": "café"}],
             "file_name": "COCO_train2014_000000000001_70.jpg"}]
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"\x80\x02" + _py2_pickle(refs) + b".")
    loaded = load_refs_pickle(str(path))
    assert loaded == refs


def test_missing_refs_file_is_named(synthetic_root):
    with pytest.raises(ReferError, match=r"refs\(google\)\.p"):
        Refer(synthetic_root, "refcoco", "google")
    with pytest.raises(ReferError, match="refcocog"):
        Refer(synthetic_root, "refcocog", "umd")


def test_missing_refs_file_fails_the_cli_call(synthetic_root, tmp_path):
    root = copy_synthetic(synthetic_root, tmp_path / "data")
    os.remove(os.path.join(root, "refcoco", "refs(unc).p"))
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = build_mindrecord.main(convert_args(root, tmp_path / "mr"))
    assert code == 1
    assert os.path.join(root, "refcoco", "refs(unc).p") in err.getvalue()


def test_unknown_split_is_named(synthetic_root, tmp_path):
    with pytest.raises(DataError, match="testC.*available: train, val, testA, testB"):
        convert(synthetic_root, tmp_path, "--splits", "val,testC")


def test_interrupted_write_leaves_no_set_and_keeps_the_old_one(synthetic_root, tmp_path, monkeypatch):
    out = tmp_path / "mr"
    convert(synthetic_root, out, "--splits", "val")
    old_files = {path: open(path, "rb").read() for path in set_files(out, "refcoco_unc_val")}
    old_index = open(index_path(str(out), "refcoco", "unc", "val"), "rb").read()
    monkeypatch.setattr(build_mindrecord, "WRITE_CHUNK", 1)
    real_write = build_mindrecord.FileWriter.write_raw_data
    calls = []

    def interrupted_write(self, rows, *args, **kwargs):
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real_write(self, rows, *args, **kwargs)

    monkeypatch.setattr(build_mindrecord.FileWriter, "write_raw_data", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        convert(synthetic_root, out, "--splits", "val")
    assert {path: open(path, "rb").read() for path in set_files(out, "refcoco_unc_val")} == old_files
    assert open(index_path(str(out), "refcoco", "unc", "val"), "rb").read() == old_index
    assert not glob.glob(os.path.join(str(out), ".*"))

    fresh = tmp_path / "fresh"
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        convert(synthetic_root, fresh, "--splits", "val")
    assert not set_files(fresh, "refcoco_unc_val")
    assert not os.path.exists(index_path(str(fresh), "refcoco", "unc", "val"))


def test_set_is_incomplete_until_its_first_index_is_in_place(synthetic_root, tmp_path, monkeypatch):
    out = tmp_path / "mr"
    real_replace = os.replace

    def failing_replace(source, target):
        if str(target).endswith("refcoco_unc_val.mindrecord0.db"):
            raise OSError("simulated crash while publishing")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        convert(synthetic_root, out, "--splits", "val", "--num_shards", "2")
    monkeypatch.undo()
    base = mindrecord_path(str(out), "refcoco", "unc", "val")
    assert os.path.isfile(base + "0") and first_mindrecord_file(base) is None
    with pytest.raises(FileNotFoundError, match="refcoco_unc_val.mindrecord"):
        find_mindrecord(str(out), "refcoco", "unc", "val")


def test_empty_sentence_is_kept_and_warned(synthetic_root, refer, tmp_path, capsys):
    root = copy_synthetic(synthetic_root, tmp_path / "data")
    refs_path = os.path.join(root, "refcoco", "refs(unc).p")
    with open(refs_path, "rb") as handle:
        refs = pickle.load(handle)
    target = min((ref for ref in refs if ref["split"] == "val"), key=lambda ref: ref["ref_id"])
    target["sentences"][0]["raw"] = ""
    empty_id = target["sentences"][0]["sent_id"]
    with open(refs_path, "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    build(get_config(convert_args(root, tmp_path / "mr", "--splits", "val"), TINY_CONFIG))
    captured = capsys.readouterr()
    assert "1 empty sentence" in captured.err and str(empty_id) in captured.err
    table = read_table(str(tmp_path / "mr"), "val")
    position = table.sent_ids.tolist().index(empty_id)
    assert table.input_ids[position].tolist() == [2, 3] + [0] * 10
    assert table.attention_mask[position].tolist() == [1, 1] + [0] * 10
    assert len(table.sent_ids) == refer.split_counts("val")["sentences"]


def test_file_layout_sizes_pages_and_header_to_the_data():
    small = build_mindrecord.FileLayout([2000] * 100, num_shards=1)
    assert small.page_size == build_mindrecord.MIN_PAGE_SIZE and small.header_size == build_mindrecord.MIN_HEADER_SIZE
    coco_size = build_mindrecord.FileLayout([400_000] * 20_000, num_shards=4)
    assert coco_size.page_size == build_mindrecord.MAX_PAGE_SIZE
    total = 20_000 * 400_000
    assert coco_size.header_size >= (total // coco_size.page_size) * build_mindrecord.HEADER_BYTES_PER_PAGE
    huge_image = build_mindrecord.FileLayout([100] * 10 + [6_000_000], num_shards=1)
    assert huge_image.page_size >= 2 * 6_000_000


def test_row_size_bounds_cover_the_written_rows(converted, refer):
    out, _ = converted
    groups = build_mindrecord.refs_by_image(refer.refs_of_split("train"))
    bounds = build_mindrecord.FileLayout.of_images(refer, groups)
    rows = read_rows(find_mindrecord(out, "refcoco", "unc", "train"))
    for bound, row in zip(bounds, rows):
        assert len(row["image"].tobytes()) + len(row["masks"].tobytes()) + 8 * len(row["ref_ids"]) * 2 <= bound


def test_files_are_not_padded_far_beyond_their_data(converted):
    out, _ = converted
    paths = glob.glob(os.path.join(out, "*.mindrecord*"))
    apparent = sum(os.stat(path).st_size for path in paths)
    on_disk = sum(os.stat(path).st_blocks * 512 for path in paths)
    # MindRecord's defaults made every file of this 40-image set about 50 MB long (mostly holes); now a file
    # holds at most its header and two unfilled pages beyond its data.
    assert apparent < 4 * 1024 * 1024
    data_files = [path for path in paths if not path.endswith(".db")]
    assert apparent <= on_disk + len(data_files) * (build_mindrecord.MIN_HEADER_SIZE + 2 * build_mindrecord.MIN_PAGE_SIZE)


def test_a_set_of_many_pages_reads_back_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(build_mindrecord, "PAGES_PER_SET", 10 ** 6)  # the smallest pages that hold a row
    # 2000 rows of 12 kB blobs on 32 KiB pages: about 800 pages, where MindRecord's smallest header (64 KiB)
    # holds about 300 (measured: more fails the commit with "shard header is too big").
    rng = np.random.default_rng(0)
    blob = rng.bytes(12_000)
    rows = ({"image_id": index, "height": 4, "width": 4, "image": blob, "masks": b"m" * 100,
             "mask_ends": np.array([100], np.int64), "ref_ids": np.array([index], np.int64),
             "sentences": f'["row {index}"]'} for index in range(2000))
    layout = build_mindrecord.FileLayout([12_100] * 2000, num_shards=1)
    assert layout.page_size == build_mindrecord.MIN_PAGE_SIZE
    base = str(tmp_path / "many.mindrecord")
    assert build_mindrecord.write_split(base, rows, 1, layout) == 2000
    read = list(ds.MindDataset(base, columns_list=["image_id", "image"], shuffle=False)
                .create_tuple_iterator(output_numpy=True, num_epochs=1))
    assert [int(row[0]) for row in read] == list(range(2000))
    assert read[-1][1].tobytes() == blob


def main_error(args):
    """(exit code, stderr) of the converter's command line, called in-process."""
    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        code = build_mindrecord.main(args)
    return code, err.getvalue().strip()


def test_an_empty_refs_file_is_an_error_and_writes_nothing(synthetic_root, tmp_path):
    root = copy_synthetic(synthetic_root, tmp_path / "data")
    refs_path = os.path.join(root, "refcoco", "refs(unc).p")
    with open(refs_path, "wb") as handle:
        pickle.dump([], handle, protocol=2)
    code, err = main_error(convert_args(root, tmp_path / "mr"))
    assert (code, err) == (1, f"error: {refs_path} holds no refs: nothing to convert")
    assert not (tmp_path / "mr").exists()


def test_skip_bad_with_every_image_missing_says_so(synthetic_root, tmp_path):
    empty_images = tmp_path / "no_images"
    empty_images.mkdir()
    args = convert_args(synthetic_root, tmp_path / "mr", "--skip_bad", "true", "--splits", "val")
    args[args.index("--image_root") + 1] = str(empty_images)
    code, err = main_error(args)
    assert code == 1 and err.startswith("error: refcoco_unc_val: all ") and "images were skipped by --skip_bad" in err
    assert f"image not found: {empty_images}" in err and err.endswith("nothing was written")
    assert not set_files(tmp_path / "mr", "refcoco_unc_val")


def test_an_image_root_that_is_not_a_folder_is_named(synthetic_root, tmp_path):
    args = convert_args(synthetic_root, tmp_path / "mr")
    args[args.index("--image_root") + 1] = str(tmp_path / "nowhere")
    assert main_error(args) == (1, f"error: --image_root {tmp_path / 'nowhere'} is not a folder")
