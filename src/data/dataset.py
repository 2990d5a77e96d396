"""MindRecord input pipeline: decode, squash-resize, normalise; one sentence per ref in training.

Batches: image float32 (B, 3, S, S) ImageNet-normalised, input_ids int32 (B, T),
attention_mask int32 (B, T), mask float32 (B, 1, S, S) in {0, 1}; with_ids=True adds
ref_id and sent_id int64 (B,).
"""
import os
import re
import threading

import cv2
import numpy as np
import mindspore.dataset as ds
import mindspore.dataset.vision as vision
from mindspore.dataset.vision import Inter

from src.data.refer import file_tag

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATA_COLUMNS = ["image", "input_ids", "attention_mask", "mask"]
ID_COLUMNS = ["ref_id", "sent_id"]
RECORD_COLUMNS = ["image", "mask", "input_ids", "attention_mask", "ref_id", "sent_id"]


def mindrecord_name(dataset, split_by, split):
    """File-set name, e.g. 'refcocop_unc_testA' for refcoco+."""
    return f"{file_tag(dataset)}_{split_by}_{split}"


def mindrecord_path(mindrecord_dir, dataset, split_by, split):
    """Base path of a split's file set; one file keeps this name, K > 1 files add 0..K-1."""
    return os.path.join(mindrecord_dir, mindrecord_name(dataset, split_by, split) + ".mindrecord")


def mindrecord_files(base_path):
    """Existing files of a file set (data files and their .db indexes), sorted."""
    folder, base = os.path.split(base_path)
    if not os.path.isdir(folder or "."):
        return []
    pattern = re.compile(re.escape(base) + r"(\d+)?(\.db)?")
    return sorted(os.path.join(folder, name) for name in os.listdir(folder or ".") if pattern.fullmatch(name))


def first_mindrecord_file(base_path):
    """The first data file of a complete file set, or None (a set is complete once its first .db exists)."""
    for candidate in (base_path, base_path + "0"):
        if os.path.isfile(candidate) and os.path.isfile(candidate + ".db"):
            return candidate
    return None


def find_mindrecord(mindrecord_dir, dataset, split_by, split):
    """First file of a split's file set; a clear error naming the expected file when absent."""
    base = mindrecord_path(mindrecord_dir, dataset, split_by, split)
    first = first_mindrecord_file(base)
    if first is None:
        raise FileNotFoundError(
            f"MindRecord for {dataset}/{split_by}/{split} not found: expected {base} (or {base}0 and "
            f"its .db index); convert it with: python -m src.data.build_mindrecord --dataset {dataset} "
            f"--split_by {split_by} --mindrecord_dir {mindrecord_dir} ...")
    return first


def _image_ops(image_size):
    mean = [255.0 * value for value in IMAGENET_MEAN]
    std = [255.0 * value for value in IMAGENET_STD]
    return [vision.Resize((image_size, image_size), Inter.LINEAR),
            vision.Normalize(mean=mean, std=std),
            vision.HWC2CHW()]


_EAGER_OPS = {}


def decode_image(image_bytes):
    """Encoded image bytes -> RGB uint8 (H, W, 3), with the pipeline's decoder."""
    if "decode" not in _EAGER_OPS:
        _EAGER_OPS["decode"] = vision.Decode()
    return _EAGER_OPS["decode"](np.frombuffer(image_bytes, np.uint8))


def preprocess_image(rgb_uint8_hwc, image_size):
    """RGB uint8 (H, W, 3) (or encoded bytes) -> float32 (3, S, S): bilinear squash + ImageNet norm."""
    if isinstance(rgb_uint8_hwc, (bytes, bytearray)):
        rgb_uint8_hwc = decode_image(rgb_uint8_hwc)
    image = np.ascontiguousarray(rgb_uint8_hwc, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    if image_size not in _EAGER_OPS:
        _EAGER_OPS[image_size] = _image_ops(image_size)
    for op in _EAGER_OPS[image_size]:
        image = op(image)
    return np.asarray(image, np.float32)


def decode_mask(mask_bytes, image_size=None):
    """PNG mask bytes -> float32 (1, S, S) in {0, 1} (nearest resize); no resize when size is None."""
    mask = cv2.imdecode(np.frombuffer(mask_bytes, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError("cannot decode a mask PNG")
    if image_size is not None:
        mask = cv2.resize(mask, (image_size, image_size), interpolation=cv2.INTER_NEAREST)
    return (mask > 0).astype(np.float32)[None]


class _MaskOp:
    """Picklable map operation for the mask column."""

    def __init__(self, image_size):
        self.image_size = image_size

    def __call__(self, mask_bytes):
        return decode_mask(np.asarray(mask_bytes).tobytes(), self.image_size)


_TABLES = {}


def read_row_table(first_file):
    """ref_id, sent_id, input_ids, attention_mask of every row (no image data), in stored order."""
    stat = os.stat(first_file + ".db")
    key = (os.path.abspath(first_file), stat.st_mtime_ns, stat.st_size)
    if key not in _TABLES:
        _TABLES.clear()
        _TABLES[key] = _read_row_table(first_file)
    return _TABLES[key]


def _read_row_table(first_file):
    columns = ["ref_id", "sent_id", "input_ids", "attention_mask"]
    data = ds.MindDataset(first_file, columns_list=columns, shuffle=False, num_parallel_workers=1)
    rows = list(data.create_tuple_iterator(output_numpy=True, num_epochs=1))
    return {
        "ref_id": np.array([int(row[0]) for row in rows], np.int64),
        "sent_id": np.array([int(row[1]) for row in rows], np.int64),
        "input_ids": np.stack([row[2] for row in rows]).astype(np.int32),
        "attention_mask": np.stack([row[3] for row in rows]).astype(np.int32),
    }


class SentencePicker:
    """ref_id -> (input_ids, attention_mask, ref_id, sent_id) of a random sentence of that ref.

    The k-th visit of a ref (its k-th epoch) draws from a generator seeded by (seed, ref_id, k),
    so the choice changes every epoch yet does not depend on worker timing.
    """

    def __init__(self, table, seed, first_visit=0):
        self.table = table
        self.seed = int(seed)
        self.first_visit = int(first_visit)
        order = np.argsort(table["ref_id"], kind="stable")
        refs, starts = np.unique(table["ref_id"][order], return_index=True)
        self.rows = dict(zip(refs.tolist(), np.split(order, starts[1:])))
        self.visits = {}
        self._lock = threading.Lock()

    def __call__(self, ref_id):
        ref = int(ref_id)
        with self._lock:
            visit = self.visits.get(ref, self.first_visit)
            self.visits[ref] = visit + 1
        rows = self.rows[ref]
        pick = rows[np.random.default_rng([abs(self.seed), abs(ref), visit]).integers(len(rows))]
        return (self.table["input_ids"][pick], self.table["attention_mask"][pick],
                np.int64(ref), np.int64(self.table["sent_id"][pick]))


def _training_source(config, first_file, rank_id, group_size, epoch):
    """One row per ref (image and mask are the same for all its sentences), shuffled every epoch;
    the sentence is then drawn per ref by SentencePicker."""
    table = read_row_table(first_file)
    _, first_rows = np.unique(table["ref_id"], return_index=True)
    # DistributedSampler reshuffles every epoch (SubsetRandomSampler alone repeats its order) and
    # its epoch e with seed s is epoch 0 with seed s + e, so a pipeline built for `epoch` starts
    # where a straight run would be. With group_size > 1 each rank gets ceil(refs / group_size).
    ds.config.set_seed(int(config.seed) + int(epoch))
    sampler = ds.DistributedSampler(group_size, rank_id, shuffle=True)
    sampler.add_child(ds.SubsetSampler(sorted(first_rows.tolist())))
    data = ds.MindDataset(first_file, columns_list=["image", "mask", "ref_id"], sampler=sampler,
                          num_parallel_workers=max(1, int(config.num_parallel_workers)))
    return data.map(operations=SentencePicker(table, config.seed, epoch), input_columns=["ref_id"],
                    output_columns=["input_ids", "attention_mask", "ref_id", "sent_id"],
                    num_parallel_workers=1)


def _evaluation_source(config, first_file, rank_id, group_size):
    workers = max(1, int(config.num_parallel_workers))
    if group_size == 1:
        return ds.MindDataset(first_file, columns_list=RECORD_COLUMNS, shuffle=False,
                              num_parallel_workers=workers)
    # Uneven shards instead of MindDataset's wrap-around padding, so no row counts twice.
    num_rows = ds.MindDataset(first_file, columns_list=ID_COLUMNS, shuffle=False).get_dataset_size()
    sampler = ds.SubsetSampler(list(range(rank_id, num_rows, group_size)))
    return ds.MindDataset(first_file, columns_list=RECORD_COLUMNS, sampler=sampler,
                          num_parallel_workers=workers)


def create_dataset(config, split, training, rank_id=0, group_size=1, with_ids=False, epoch=0, skip_batches=0):
    """Batched pipeline of one split's MindRecord.

    training: one random sentence per ref per epoch, seeded shuffle, drop_remainder=True, batch_size;
    the first epoch drawn is `epoch` and its first `skip_batches` batches are left out (so a run resumed
    at an epoch, or in the middle of one, sees the data a straight run would).
    evaluation: every sentence in stored order, last batch may be smaller, eval_batch_size;
    with group_size > 1 rank r reads rows r, r + group_size, ... (every row exactly once overall).
    """
    if not 0 <= rank_id < group_size:
        raise ValueError(f"rank_id {rank_id} must be in [0, {group_size})")
    first_file = find_mindrecord(config.mindrecord_dir, config.dataset, config.split_by, split)
    image_size = int(config.image_size)
    workers = max(1, int(config.num_parallel_workers))
    batch_size = int(config.batch_size if training else config.eval_batch_size)
    if training:
        data = _training_source(config, first_file, rank_id, group_size, epoch)
        if skip_batches > 0:
            # After the sentence draw (a ref's sentence depends on how often it was drawn before, and a rank's
            # share may hold a ref twice), before decoding (skipped images are never decoded).
            data = data.skip(skip_batches * batch_size)
    else:
        data = _evaluation_source(config, first_file, rank_id, group_size)
    data = data.map(operations=[vision.Decode()] + _image_ops(image_size), input_columns=["image"],
                    num_parallel_workers=workers)
    data = data.map(operations=_MaskOp(image_size), input_columns=["mask"], num_parallel_workers=workers)
    data = data.project(DATA_COLUMNS + (ID_COLUMNS if with_ids else []))
    return data.batch(batch_size, drop_remainder=bool(training))


def eval_sample_ids(config, split, rank_id=0, group_size=1):
    """(ref_id, sent_id) arrays in the order create_dataset(training=False) yields the rows."""
    first_file = find_mindrecord(config.mindrecord_dir, config.dataset, config.split_by, split)
    table = read_row_table(first_file)
    return table["ref_id"][rank_id::group_size], table["sent_id"][rank_id::group_size]


def check_token_ids(config, split):
    """Raises ValueError when a stored token id is >= config.vocab_size (a vocab.txt other than the
    model's was used for conversion); an out-of-range id would otherwise fail inside the graph."""
    first_file = find_mindrecord(config.mindrecord_dir, config.dataset, config.split_by, split)
    data = ds.MindDataset(first_file, columns_list=["input_ids"], shuffle=False, num_parallel_workers=1)
    largest = -1
    for (ids,) in data.create_tuple_iterator(output_numpy=True, num_epochs=1):
        largest = max(largest, int(ids.max()))
    if largest >= config.vocab_size:
        raise ValueError(f"{first_file} holds token id {largest}, but the model's vocab_size is {config.vocab_size}: "
                         "convert with the vocab.txt that matches the text encoder, or set --vocab_size")
