"""Convert a REFER dataset to MindRecord: one file set per split, one row per sentence.

python -m src.data.build_mindrecord --refer_data_root R --image_root I --dataset refcoco \
    --split_by unc --vocab_file V --mindrecord_dir M [--splits train,val] [--num_shards K] [--skip_bad]

Each set is written in a hidden temporary folder of mindrecord_dir and moved into place when
complete; the first file's .db index is moved last, so a set whose first .db exists is complete.
"""
import os
import shutil
import sys
from collections import OrderedDict

import cv2
import numpy as np
from tqdm import tqdm
from mindspore.mindrecord import FileWriter

from model_utils.config import ConfigError, get_config
from src.data.dataset import mindrecord_files, mindrecord_name, mindrecord_path
from src.data.refer import Refer, ReferError
from src.data.tokenizer import VocabError, build_tokenizer
from src.files import atomic_path

WRITE_CHUNK = 256
IMAGE_CACHE_SIZE = 16
MASK_VALUE = 255  # masks are stored as PNG uint8 with 0 = background, 255 = object


class DataError(RuntimeError):
    """Input data that stops a conversion (missing or corrupt image, empty split, ...)."""


def record_schema(max_tokens):
    return {
        "image": {"type": "bytes"},
        "mask": {"type": "bytes"},
        "input_ids": {"type": "int32", "shape": [max_tokens]},
        "attention_mask": {"type": "int32", "shape": [max_tokens]},
        "ref_id": {"type": "int64"},
        "sent_id": {"type": "int64"},
        "image_id": {"type": "int64"},
        "sentence": {"type": "string"},
    }


def encode_mask_png(mask):
    ok, buffer = cv2.imencode(".png", (mask > 0).astype(np.uint8) * MASK_VALUE)
    if not ok:
        raise DataError("cannot PNG-encode a mask")
    return buffer.tobytes()


def read_image(path, height, width):
    """Encoded bytes of a readable image of the expected size; DataError naming the file otherwise."""
    if not os.path.isfile(path):
        raise DataError(f"image not found: {path}")
    with open(path, "rb") as handle:
        data = handle.read()
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if decoded is None:
        raise DataError(f"cannot decode image (corrupt or not an image): {path}")
    if decoded.shape[:2] != (height, width):
        raise DataError(f"image {path} is {decoded.shape[1]}x{decoded.shape[0]}, "
                        f"instances.json says {width}x{height}")
    return data


class ImageReader:
    """Reads and validates images, caching the last few and every failure."""

    def __init__(self, refer):
        self.refer = refer
        self.cache = OrderedDict()
        self.failures = {}

    def get(self, image_id):
        if image_id in self.failures:
            raise self.failures[image_id]
        if image_id in self.cache:
            self.cache.move_to_end(image_id)
            return self.cache[image_id]
        info = self.refer.image_info(image_id)
        try:
            data = read_image(self.refer.image_path(image_id), info["height"], info["width"])
        except DataError as err:
            self.failures[image_id] = err
            raise
        self.cache[image_id] = data
        if len(self.cache) > IMAGE_CACHE_SIZE:
            self.cache.popitem(last=False)
        return data


class SplitStats:
    def __init__(self):
        self.refs = set()
        self.images = set()
        self.sentences = 0
        self.truncated = 0
        self.empty = []
        self.skipped = []  # (sent_id, ref_id, image_id, reason)

    def skipped_counts(self):
        return (len({item[1] for item in self.skipped}), len(self.skipped),
                len({item[2] for item in self.skipped}))


def iter_rows(refer, refs, tokenizer, max_tokens, skip_bad, stats):
    """MindRecord rows of the refs (sorted by ref_id, sentences in order)."""
    images = ImageReader(refer)
    for ref in tqdm(refs, desc="refs", unit="ref", disable=None, leave=False):
        try:
            image = images.get(ref["image_id"])
        except DataError as err:
            if not skip_bad:
                raise
            for sentence in ref["sentences"]:
                stats.skipped.append((sentence["sent_id"], ref["ref_id"], ref["image_id"], str(err)))
            continue
        mask = encode_mask_png(refer.ref_mask(ref))
        for sentence in ref["sentences"]:
            raw = sentence["raw"] or ""
            input_ids, attention_mask, length = tokenizer.encode_with_length(raw, max_tokens)
            if length == 2:
                stats.empty.append(sentence["sent_id"])
            elif length > max_tokens:
                stats.truncated += 1
            stats.sentences += 1
            stats.refs.add(ref["ref_id"])
            stats.images.add(ref["image_id"])
            yield {"image": image, "mask": mask, "input_ids": input_ids, "attention_mask": attention_mask,
                   "ref_id": int(ref["ref_id"]), "sent_id": int(sentence["sent_id"]),
                   "image_id": int(ref["image_id"]), "sentence": raw}


def check_unique_sent_ids(refs, name):
    seen = set()
    for ref in refs:
        for sentence in ref["sentences"]:
            if sentence["sent_id"] in seen:
                raise DataError(f"{name}: sent_id {sentence['sent_id']} occurs twice (it indexes the rows)")
            seen.add(sentence["sent_id"])


def write_split(tmp_base, rows, max_tokens, num_shards):
    """Write rows into a file set at tmp_base; returns the number of rows."""
    writer = FileWriter(tmp_base, shard_num=num_shards, overwrite=True)
    writer.add_schema(record_schema(max_tokens), "CoupAlign referring segmentation")
    writer.add_index(["ref_id", "sent_id", "image_id"])
    count = 0
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == WRITE_CHUNK:
            writer.write_raw_data(chunk)
            count += len(chunk)
            chunk = []
    if chunk:
        writer.write_raw_data(chunk)
        count += len(chunk)
    if count == 0:
        raise DataError(f"no rows to write for {os.path.basename(tmp_base)}")
    writer.commit()
    return count


def publish(tmp_dir, final_base):
    """Replace the final file set by the one in tmp_dir; the first .db goes last, as the completion mark."""
    old = mindrecord_files(final_base)
    marker_names = (final_base + ".db", final_base + "0.db")
    for path in sorted(old, key=lambda item: item not in marker_names):
        os.remove(path)
    folder = os.path.dirname(final_base)
    names = sorted(os.listdir(tmp_dir))
    markers = [name for name in names if os.path.join(folder, name) in marker_names]
    for name in [name for name in names if name not in markers] + markers:
        os.replace(os.path.join(tmp_dir, name), os.path.join(folder, name))
    shutil.rmtree(tmp_dir, ignore_errors=True)


def write_skip_report(path, stats):
    if not stats.skipped:
        if os.path.exists(path):
            os.remove(path)
        return
    with atomic_path(path) as temp, open(temp, "w", encoding="utf-8") as handle:
        handle.write("sent_id\tref_id\timage_id\treason\n")
        for sent_id, ref_id, image_id, reason in stats.skipped:
            handle.write(f"{sent_id}\t{ref_id}\t{image_id}\t{reason}\n")


def convert_split(refer, split, tokenizer, config):
    """Convert one split; returns its SplitStats."""
    name = mindrecord_name(config.dataset, config.split_by, split)
    final_base = mindrecord_path(config.mindrecord_dir, config.dataset, config.split_by, split)
    tmp_dir = os.path.join(config.mindrecord_dir, f".{name}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    refs = refer.refs_of_split(split)
    check_unique_sent_ids(refs, name)
    stats = SplitStats()
    try:
        rows = iter_rows(refer, refs, tokenizer, int(config.max_tokens), bool(config.skip_bad), stats)
        write_split(os.path.join(tmp_dir, os.path.basename(final_base)), rows,
                    int(config.max_tokens), int(config.num_shards))
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    publish(tmp_dir, final_base)
    write_skip_report(os.path.join(config.mindrecord_dir, f"{name}_skipped.txt"), stats)
    return stats


def summary_line(name, stats, final_base, num_shards):
    skipped_refs, skipped_sentences, skipped_images = stats.skipped_counts()
    files = final_base if num_shards == 1 else f"{final_base}0..{num_shards - 1}"
    return (f"{name}: {len(stats.refs)} refs, {stats.sentences} sentences, {len(stats.images)} images; "
            f"skipped {skipped_refs} refs, {skipped_sentences} sentences, {skipped_images} images "
            f"-> {files}")


def selected_splits(refer, splits_text):
    available = refer.splits()
    if not splits_text:
        return available
    if isinstance(splits_text, (list, tuple)):
        splits_text = ",".join(str(split) for split in splits_text)
    wanted = [split.strip() for split in str(splits_text).split(",") if split.strip()]
    missing = [split for split in wanted if split not in available]
    if missing:
        raise DataError(f"split(s) {', '.join(missing)} not in {refer.refs_path}; "
                        f"available: {', '.join(available)}")
    return wanted


def check_config(config):
    for key in ("refer_data_root", "image_root", "vocab_file", "mindrecord_dir"):
        if not config[key]:
            raise ConfigError(f"--{key} is required")
    if int(config.num_shards) < 1:
        raise ConfigError(f"--num_shards must be at least 1, got {config.num_shards}")


def build(config):
    """Convert every selected split; returns {split: SplitStats}."""
    check_config(config)
    tokenizer = build_tokenizer(config.vocab_file)
    if len(tokenizer) > int(config.vocab_size):
        print(f"WARNING: {config.vocab_file} has {len(tokenizer)} tokens but vocab_size is {config.vocab_size}; "
              "ids at or above vocab_size will not fit the text encoder", file=sys.stderr)
    refer = Refer(config.refer_data_root, config.dataset, config.split_by, config.image_root)
    os.makedirs(config.mindrecord_dir, exist_ok=True)
    results = {}
    for split in selected_splits(refer, config.splits):
        stats = convert_split(refer, split, tokenizer, config)
        name = mindrecord_name(config.dataset, config.split_by, split)
        final_base = mindrecord_path(config.mindrecord_dir, config.dataset, config.split_by, split)
        if stats.empty:
            shown = ", ".join(str(sent_id) for sent_id in stats.empty[:10])
            print(f"WARNING: {name}: {len(stats.empty)} empty sentence(s) kept as [CLS] [SEP] "
                  f"(sent_id {shown}{', ...' if len(stats.empty) > 10 else ''})", file=sys.stderr)
        if stats.truncated:
            print(f"{name}: {stats.truncated} sentence(s) longer than {config.max_tokens} tokens were cut")
        if stats.skipped:
            print(f"WARNING: {name}: skipped samples listed in "
                  f"{os.path.join(config.mindrecord_dir, name + '_skipped.txt')}", file=sys.stderr)
        print(summary_line(name, stats, final_base, int(config.num_shards)), flush=True)
        results[split] = stats
    return results


def main(argv=None):
    try:
        config = get_config(argv)
        build(config)
    except (ConfigError, ReferError, VocabError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
