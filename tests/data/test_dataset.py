"""MindRecord pipeline: shapes, normalisation, one sentence per ref per epoch, every sentence in eval."""
import contextlib
import io
import pickle
import os
from collections import Counter

import cv2
import numpy as np
import pytest
import mindspore.dataset as ds

from model_utils.config import get_config
from src.data.build_mindrecord import build
from src.data.dataset import (IMAGENET_MEAN, IMAGENET_STD, DecodeError, LayoutError, check_token_ids,
                              create_dataset, decode_image, decode_mask, decode_mask_bits, encode_mask,
                              eval_sample_ids, find_mindrecord, mask_bytes_bound, preprocess_image,
                              raising_decode_errors, ref_mask_bytes)
from src.data.refer import Refer
from src.data.synthetic import generate_synthetic
from src.data.tokenizer import encode_sentence
from tests.conftest import TINY_CONFIG

SIZE = 48  # not the synthetic image size (64), so resizing is exercised


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(str(root), num_images=40, seed=5)
    return str(root)


@pytest.fixture(scope="module")
def mindrecord_dir(synthetic_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mindrecord"))
    argv = ["--refer_data_root", synthetic_root, "--image_root", os.path.join(synthetic_root, "images"),
            "--vocab_file", os.path.join(synthetic_root, "vocab.txt"), "--mindrecord_dir", out,
            "--splits", "train,val", "--num_shards", "2"]
    with contextlib.redirect_stdout(io.StringIO()):
        build(get_config(argv, TINY_CONFIG))
    return out


@pytest.fixture(scope="module")
def refer(synthetic_root):
    return Refer(synthetic_root, "refcoco", "unc", os.path.join(synthetic_root, "images"))


def make_config(mindrecord_dir, **overrides):
    values = {"mindrecord_dir": mindrecord_dir, "image_size": SIZE, "num_parallel_workers": 2}
    values.update(overrides)
    return get_config([], TINY_CONFIG, overrides=values)


def batches(data, epochs=1):
    iterator = data.create_dict_iterator(output_numpy=True, num_epochs=epochs)
    return [list(iterator) for _ in range(epochs)]


def expected_mask(refer, ref_id):
    ref = next(ref for ref in refer.refs if ref["ref_id"] == ref_id)
    return cv2.resize(refer.ref_mask(ref), (SIZE, SIZE), interpolation=cv2.INTER_NEAREST).astype(np.float32)


def test_training_batches_have_the_contract_shapes(mindrecord_dir):
    config = make_config(mindrecord_dir)
    data = create_dataset(config, "train", training=True)
    assert data.get_col_names() == ["image", "input_ids", "attention_mask", "mask"]
    batch = batches(data)[0][0]
    batch_size, tokens = config.batch_size, config.max_tokens
    assert batch["image"].shape == (batch_size, 3, SIZE, SIZE) and batch["image"].dtype == np.float32
    assert batch["input_ids"].shape == (batch_size, tokens) and batch["input_ids"].dtype == np.int32
    assert batch["attention_mask"].shape == (batch_size, tokens) and batch["attention_mask"].dtype == np.int32
    assert batch["mask"].shape == (batch_size, 1, SIZE, SIZE) and batch["mask"].dtype == np.float32
    assert set(np.unique(batch["mask"])) <= {0.0, 1.0}


def test_training_is_one_sentence_per_ref_per_epoch(mindrecord_dir, refer):
    config = make_config(mindrecord_dir, batch_size=1)
    train_refs = {ref["ref_id"]: ref for ref in refer.refs_of_split("train")}
    choices, orders = [], []
    for epoch_index in range(3):
        data = create_dataset(config, "train", training=True, with_ids=True, epoch=epoch_index)
        assert data.get_dataset_size() == len(train_refs)
        epoch = batches(data)[0]
        ref_ids = [int(batch["ref_id"][0]) for batch in epoch]
        assert Counter(ref_ids) == Counter(list(train_refs))
        for batch in epoch[:10]:
            np.testing.assert_array_equal(batch["mask"][0, 0], expected_mask(refer, int(batch["ref_id"][0])))
        for batch in epoch:
            sent_ids = [sentence["sent_id"] for sentence in train_refs[int(batch["ref_id"][0])]["sentences"]]
            assert int(batch["sent_id"][0]) in sent_ids
        choices.append({int(batch["ref_id"][0]): int(batch["sent_id"][0]) for batch in epoch})
        orders.append(ref_ids)
    assert orders[0] != orders[1] != orders[2]
    assert choices[0] != choices[1] or choices[1] != choices[2]


def test_training_tokens_belong_to_the_chosen_sentence(mindrecord_dir, synthetic_root, refer):
    config = make_config(mindrecord_dir, batch_size=1)
    vocab = os.path.join(synthetic_root, "vocab.txt")
    raw = {sentence["sent_id"]: sentence["raw"] for ref in refer.refs for sentence in ref["sentences"]}
    for batch in batches(create_dataset(config, "train", training=True, with_ids=True))[0]:
        ids, attention = encode_sentence(vocab, raw[int(batch["sent_id"][0])], config.max_tokens)
        assert batch["input_ids"][0].tolist() == ids.tolist()
        assert batch["attention_mask"][0].tolist() == attention.tolist()


def test_training_data_does_not_depend_on_the_number_of_workers(mindrecord_dir):
    def content(workers):
        data = create_dataset(make_config(mindrecord_dir, batch_size=4, num_parallel_workers=workers), "train",
                              training=True, with_ids=True, epoch=2)
        return [(batch["sent_id"].tolist(), batch["image"].tobytes(), batch["mask"].tobytes())
                for batch in batches(data)[0]]

    assert content(1) == content(2)


def test_training_is_seeded_and_resumable_by_epoch(mindrecord_dir):
    config = make_config(mindrecord_dir)

    def sent_ids(config, epoch):
        data = create_dataset(config, "train", training=True, with_ids=True, epoch=epoch)
        return [int(x) for batch in batches(data)[0] for x in batch["sent_id"]]

    first, second = sent_ids(config, 0), sent_ids(config, 1)
    assert sent_ids(config, 0) == first and sent_ids(config, 1) == second
    assert first != second
    assert sent_ids(make_config(mindrecord_dir, seed=7), 0) != first


@pytest.mark.parametrize("rank_id, group_size", [(0, 1), (2, 3)])
def test_training_skips_the_batches_a_mid_epoch_resume_trained_before(mindrecord_dir, rank_id, group_size):
    config = make_config(mindrecord_dir, batch_size=2)

    def epoch_batches(**kwargs):
        data = create_dataset(config, "train", training=True, rank_id=rank_id, group_size=group_size,
                              with_ids=True, epoch=1, **kwargs)
        return [{key: batch[key].tolist() for key in ("sent_id", "input_ids", "mask")} for batch in batches(data)[0]]

    straight = epoch_batches()
    assert len(straight) > 3
    assert epoch_batches(skip_batches=3) == straight[3:]


def test_training_drops_the_remainder(mindrecord_dir, refer):
    config = make_config(mindrecord_dir, batch_size=8)
    num_refs = len(refer.refs_of_split("train"))
    data = create_dataset(config, "train", training=True)
    assert data.get_dataset_size() == num_refs // 8
    assert all(batch["image"].shape[0] == 8 for batch in batches(data)[0])


def test_training_shards_split_the_refs(mindrecord_dir, refer):
    config = make_config(mindrecord_dir, batch_size=1)
    num_refs = len(refer.refs_of_split("train"))
    per_rank = []
    for rank in range(3):
        data = create_dataset(config, "train", training=True, rank_id=rank, group_size=3, with_ids=True)
        per_rank.append([int(batch["ref_id"][0]) for batch in batches(data)[0]])
    assert all(len(ids) == -(-num_refs // 3) for ids in per_rank)
    assert set().union(*per_rank) == {ref["ref_id"] for ref in refer.refs_of_split("train")}


def test_evaluation_yields_every_sentence_in_fixed_order(mindrecord_dir, refer):
    config = make_config(mindrecord_dir)
    data = create_dataset(config, "val", training=False, with_ids=True)
    assert data.get_col_names() == ["image", "input_ids", "attention_mask", "mask", "ref_id", "sent_id"]
    first, second = batches(data, epochs=2)
    image_order = sorted(refer.refs_of_split("val"), key=lambda ref: (ref["image_id"], ref["ref_id"]))
    expected = [sentence["sent_id"] for ref in image_order for sentence in ref["sentences"]]
    got = [int(x) for batch in first for x in batch["sent_id"]]
    assert got == expected == [int(x) for batch in second for x in batch["sent_id"]]
    assert eval_sample_ids(config, "val")[1].tolist() == expected
    assert all(batch["image"].shape[0] == config.eval_batch_size for batch in first[:-1])
    assert first[-1]["image"].shape[0] == len(expected) - config.eval_batch_size * (len(first) - 1)
    for batch in first[:2]:
        for index, ref_id in enumerate(batch["ref_id"]):
            np.testing.assert_array_equal(batch["mask"][index, 0], expected_mask(refer, int(ref_id)))


@pytest.mark.parametrize("group_size", [2, 3])
def test_evaluation_shards_read_every_sentence_once(mindrecord_dir, refer, group_size):
    config = make_config(mindrecord_dir)
    seen = []
    for rank in range(group_size):
        data = create_dataset(config, "val", training=False, rank_id=rank, group_size=group_size, with_ids=True)
        ids = [int(x) for batch in batches(data)[0] for x in batch["sent_id"]]
        assert ids == eval_sample_ids(config, "val", rank, group_size)[1].tolist()
        seen += ids
    assert sorted(seen) == sorted(s["sent_id"] for ref in refer.refs_of_split("val") for s in ref["sentences"])


def test_normalisation_matches_numpy(mindrecord_dir):
    config = make_config(mindrecord_dir)
    first = find_mindrecord(mindrecord_dir, "refcoco", "unc", "val")
    raw = next(ds.MindDataset(first, columns_list=["image"], shuffle=False).create_dict_iterator(output_numpy=True))
    image_bytes = raw["image"].tobytes()
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    resized = cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    manual = ((resized / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
    batch = batches(create_dataset(config, "val", training=False))[0][0]
    np.testing.assert_allclose(batch["image"][0], manual, atol=1e-4)
    np.testing.assert_array_equal(preprocess_image(decode_image(image_bytes), SIZE), batch["image"][0])
    np.testing.assert_array_equal(preprocess_image(image_bytes, SIZE), batch["image"][0])


def test_preprocess_image_contract():
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    out = preprocess_image(image, 16)
    assert out.shape == (3, 16, 16) and out.dtype == np.float32
    with pytest.raises(ValueError, match="RGB"):
        preprocess_image(image[:, :, 0], 16)


def test_missing_mindrecord_is_named(tmp_path):
    config = make_config(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="refcoco_unc_testA.mindrecord"):
        create_dataset(config, "testA", training=False)
    config = make_config(str(tmp_path), dataset="refcoco+")
    with pytest.raises(FileNotFoundError, match="refcocop_unc_val.mindrecord"):
        create_dataset(config, "val", training=True)


def test_evaluation_decodes_an_image_once_per_batch_it_appears_in(mindrecord_dir, refer, monkeypatch):
    from src.data import dataset as dataset_module
    decoded = []
    real_decode = dataset_module._decode_bgr
    monkeypatch.setattr(dataset_module, "_decode_bgr", lambda data: decoded.append(1) or real_decode(data))
    config = make_config(mindrecord_dir, eval_batch_size=4)
    ref_ids = eval_sample_ids(config, "val")[0].tolist()
    image_of = {ref["ref_id"]: ref["image_id"] for ref in refer.refs}
    expected = sum(len({image_of[ref_id] for ref_id in ref_ids[start:start + 4]})
                   for start in range(0, len(ref_ids), 4))
    batches(create_dataset(config, "val", training=False))
    assert len(decoded) == expected < len(ref_ids)


def _copy_set(mindrecord_dir, target, split="val"):
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(mindrecord_dir):
        if name.startswith(f"refcoco_unc_{split}."):
            with open(os.path.join(mindrecord_dir, name), "rb") as source, \
                    open(os.path.join(target, name), "wb") as copy:
                copy.write(source.read())
    return os.path.join(target, f"refcoco_unc_{split}.index.npz")


def test_a_set_of_the_old_layout_is_refused_with_a_reconvert_hint(mindrecord_dir, tmp_path):
    index = _copy_set(mindrecord_dir, str(tmp_path))
    os.remove(index)
    with pytest.raises(LayoutError, match="older converter.*reconvert it with: python -m src.data.build_mindrecord"):
        create_dataset(make_config(str(tmp_path)), "val", training=False)


def test_an_index_of_another_layout_or_set_or_corrupt_is_refused(mindrecord_dir, tmp_path):
    index = _copy_set(mindrecord_dir, str(tmp_path))
    with np.load(index) as arrays:
        contents = dict(arrays)
    config = make_config(str(tmp_path))
    np.savez(index, **{**contents, "layout": np.int64(1)})
    with pytest.raises(LayoutError, match="layout 1, this version reads layout 3"):
        check_token_ids(config, "val")
    np.savez(index, **{**contents, "image_ids": contents["image_ids"][:-1]})
    with pytest.raises(LayoutError, match="holds 4 images but its index .* lists 3"):
        check_token_ids(config, "val")
    with open(index, "wb") as handle:
        handle.write(b"PK\x03\x04 not a zip")
    with pytest.raises(LayoutError, match="refcoco_unc_val.index.npz is corrupt"):
        eval_sample_ids(config, "val")


def test_mask_codec_round_trips_within_its_bound():
    rng = np.random.default_rng(3)
    for height, width in [(1, 1), (7, 13), (48, 64), (480, 640)]:
        for mask in (np.zeros((height, width), np.uint8), rng.integers(0, 2, (height, width), dtype=np.uint8),
                     (rng.random((height, width)) > 0.9).astype(np.uint8) * 255):
            data = encode_mask(mask)
            assert len(data) <= mask_bytes_bound(height, width)
            np.testing.assert_array_equal(decode_mask_bits(data, height, width), mask > 0)
            np.testing.assert_array_equal(decode_mask(data, height, width, 16)[0],
                                          cv2.resize((mask > 0).astype(np.uint8), (16, 16),
                                                     interpolation=cv2.INTER_NEAREST))
    with pytest.raises(DecodeError, match="cannot decode a mask"):
        decode_mask_bits(b"\x00not zlib", 4, 4)
    with pytest.raises(DecodeError, match="not those of a 5x4 mask"):
        decode_mask_bits(encode_mask(np.ones((4, 4))), 4, 5)


def _overwrite_in_file(path, old, new):
    """Replaces the first occurrence of bytes `old` in a file by `new` (same length)."""
    with open(path, "rb") as handle:
        contents = handle.read()
    position = contents.find(old)
    assert position >= 0 and len(old) == len(new)
    with open(path, "wb") as handle:
        handle.write(contents[:position] + new + contents[position + len(old):])


def _first_val_row(mindrecord_dir):
    first = find_mindrecord(mindrecord_dir, "refcoco", "unc", "val")
    return next(ds.MindDataset(first, shuffle=False).create_dict_iterator(output_numpy=True))


@pytest.mark.parametrize("training", [False, True])
def test_a_stored_image_that_does_not_decode_is_named(mindrecord_dir, tmp_path, training):
    split = "train" if training else "val"
    _copy_set(mindrecord_dir, str(tmp_path), split)
    first = find_mindrecord(str(tmp_path), "refcoco", "unc", split)
    rows = list(ds.MindDataset(first, shuffle=False).create_dict_iterator(output_numpy=True))
    image = rows[0]["image"].tobytes()
    _overwrite_in_file(first, image[:64], bytes(64))  # no JPEG header left: nothing decodes
    config = make_config(str(tmp_path), batch_size=1, data_check="sizes")  # the pipeline's own check, not sha256
    expected = f"image_id {int(rows[0]['image_id'])}: cannot decode the image"
    with pytest.raises(DecodeError, match=expected), raising_decode_errors():
        batches(create_dataset(config, split, training=training))


def test_zeros_inside_a_stored_jpeg_do_not_crash_the_pipeline(mindrecord_dir, tmp_path):
    _copy_set(mindrecord_dir, str(tmp_path))
    image = _first_val_row(mindrecord_dir)["image"].tobytes()
    middle = len(image) // 2
    _overwrite_in_file(find_mindrecord(str(tmp_path), "refcoco", "unc", "val"), image[middle:middle + 256],
                       bytes(256))
    data = batches(create_dataset(make_config(str(tmp_path), data_check="sizes"), "val", training=False))[0]
    assert sum(len(batch["mask"]) for batch in data) == len(eval_sample_ids(make_config(mindrecord_dir), "val")[1])


def test_a_stored_mask_that_does_not_decode_is_named(mindrecord_dir, tmp_path):
    _copy_set(mindrecord_dir, str(tmp_path))
    row = _first_val_row(mindrecord_dir)
    mask = ref_mask_bytes(row["masks"], row["mask_ends"], 0)
    _overwrite_in_file(find_mindrecord(str(tmp_path), "refcoco", "unc", "val"), mask, bytes(len(mask)))
    expected = f"image_id {int(row['image_id'])}, ref_id {int(row['ref_ids'][0])}: cannot decode a mask"
    with pytest.raises(DecodeError, match=expected), raising_decode_errors():
        batches(create_dataset(make_config(str(tmp_path), data_check="sizes"), "val", training=False))


def test_more_workers_than_cpus_are_lowered_with_a_note(mindrecord_dir, capsys):
    too_many = (os.cpu_count() or 1) + 3
    data = create_dataset(make_config(mindrecord_dir, num_parallel_workers=too_many), "val", training=False)
    assert sum(len(batch["mask"]) for batch in batches(data)[0]) == len(
        eval_sample_ids(make_config(mindrecord_dir), "val")[1])
    assert f"note: num_parallel_workers {too_many} lowered to" in capsys.readouterr().out


def same_class_reference(synthetic_root, split):
    """ref_id -> masks (at SIZE) of the other referred annotations of its image and category, in ref_id order,
    from pycocotools and pickle.load of the REFER files."""
    from pycocotools.coco import COCO
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(os.path.join(synthetic_root, "refcoco", "instances.json"))
    with open(os.path.join(synthetic_root, "refcoco", "refs(unc).p"), "rb") as handle:
        refs = sorted((ref for ref in pickle.load(handle) if ref["split"] == split), key=lambda ref: ref["ref_id"])
    expected = {}
    for ref in refs:
        others = []
        for other in refs:
            if (other["image_id"] == ref["image_id"] and other["category_id"] == ref["category_id"]
                    and other["ann_id"] != ref["ann_id"] and other["ann_id"] not in others):
                others.append(other["ann_id"])
        expected[ref["ref_id"]] = [cv2.resize(coco.annToMask(coco.anns[ann_id]), (SIZE, SIZE),
                                              interpolation=cv2.INTER_NEAREST) for ann_id in others]
    return expected


def test_same_class_masks_are_the_other_referred_objects_of_the_category(mindrecord_dir, synthetic_root):
    from src.data.dataset import MAX_SAME_CLASS, SAME_CLASS_COLUMNS
    data = create_dataset(make_config(mindrecord_dir, eval_batch_size=3), "val", training=False, with_ids=True,
                          same_class_masks=True)
    assert data.get_col_names()[-2:] == SAME_CLASS_COLUMNS
    expected = same_class_reference(synthetic_root, "val")
    counts = []
    for batch in batches(data)[0]:
        assert batch["same_class_masks"].shape[1:] == (MAX_SAME_CLASS, SIZE, SIZE)
        for index, ref_id in enumerate(batch["ref_id"].tolist()):
            others = expected[ref_id]
            counts.append(len(others))
            assert int(batch["same_class_count"][index]) == len(others)
            for place in range(MAX_SAME_CLASS):
                wanted = others[place] if place < len(others) else np.zeros((SIZE, SIZE), np.uint8)
                np.testing.assert_array_equal(batch["same_class_masks"][index, place], wanted)
    assert any(count > 0 for count in counts)  # the check above is not vacuous


def test_a_table_without_categories_has_no_same_class_objects():
    from src.data.dataset import SplitTable
    arrays = {name: np.zeros(1, np.int64) for name in SplitTable.FIELDS}
    table = SplitTable(arrays)
    assert not table.knows_categories and table.same_class_slots(0, 0) == []
    arrays.update(ref_ann_ids=np.array([7, 8, 9, 7]), ref_categories=np.array([1, 1, 2, 1]),
                  ref_images=np.zeros(4, np.int64), ref_ids=np.arange(4))
    table = SplitTable(arrays)
    # slot 3 is the target's own annotation again, slot 2 another category
    assert table.same_class_slots(0, 0) == [1] and table.same_class_slots(0, 2) == []
