"""Convert a REFER dataset to MindRecord: one file set per split, one row per image.

python -m src.data.build_mindrecord --refer_data_root R --image_root I --dataset refcoco \
    --split_by unc --vocab_file V --mindrecord_dir M [--splits train,val] [--num_shards K] [--skip_bad]

Layout 3 (docs/data_preparation.md): each image is stored once, with the masks of its refs; the
sentences (ids and tokens) live in a small side file `<name>.index.npz` that the pipeline reads to draw
one sentence per ref (training) or to walk every sentence (evaluation). Each set is written in a hidden
temporary folder of mindrecord_dir and moved into place when complete, with its manifest
`<name>.manifest.json` (counts, every file's size and sha256, the sources' sizes); the first file's .db index
is moved last, so a set whose first .db exists is complete.
"""
import array
import json
import os
import shutil
import sys
from itertools import groupby

import cv2
import numpy as np
from tqdm import tqdm
from mindspore.mindrecord import FileWriter

from model_utils.config import ConfigError, get_config
from src.data.dataset import (LAYOUT_VERSION, encode_mask, index_path, manifest_path, mask_bytes_bound,
                              mindrecord_files, mindrecord_name, mindrecord_path)
from src.data.refer import Refer, ReferError
from src.data.tokenizer import VocabError, build_tokenizer
from src.files import atomic_path, check_output_folder, file_sha256

# The manifest's format (and the converter's as a whole): bump it when either changes.
CONVERTER_VERSION = 2  # 2: the index also holds ref_ann_ids and ref_categories (same layout)
WRITE_CHUNK = 64
# MindRecord's defaults (16 MiB header, 32 MiB pages) make every file about 50 MB long, however little it
# holds; the bytes beyond the data are holes on disk but real bytes for cp or an object store. Pages are
# sized to the data instead. A page must hold the largest row's blobs (the writer refuses smaller ones),
# and the header lists every page: about 200 bytes each (measured), so 1 KiB per page leaves a wide margin.
MIN_PAGE_SIZE = 32 * 1024
MAX_PAGE_SIZE = 4 * 1024 * 1024
PAGES_PER_SET = 64
MIN_HEADER_SIZE = 64 * 1024
MAX_HEADER_SIZE = 128 * 1024 * 1024
HEADER_BYTES_PER_PAGE = 1024
RAW_BYTES_PER_ROW = 512  # image_id, sizes, ref ids and the sentences' text of a row (raw pages)


class DataError(RuntimeError):
    """Input data that stops a conversion (missing or corrupt image, empty split, ...)."""


def record_schema():
    """One row per image: the encoded image, its refs' masks (encode_mask's bytes back to back, mask_ends[k]
    is where ref k's end), the refs' ids in that order and the sentences' text (JSON, for inspection only)."""
    return {
        "image_id": {"type": "int64"},
        "height": {"type": "int32"},
        "width": {"type": "int32"},
        "image": {"type": "bytes"},
        "masks": {"type": "bytes"},
        "mask_ends": {"type": "int64", "shape": [-1]},
        "ref_ids": {"type": "int64", "shape": [-1]},
        "sentences": {"type": "string"},
    }


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


class SplitStats:
    def __init__(self):
        self.refs = set()
        self.images = set()
        self.sentences = 0
        self.image_bytes = 0
        self.truncated = 0
        self.empty = []
        self.skipped = []  # (sent_id, ref_id, image_id, reason)

    def skipped_counts(self):
        return (len({item[1] for item in self.skipped}), len(self.skipped),
                len({item[2] for item in self.skipped}))


class SplitIndex:
    """The side table of a split: per ref its image row, slot, annotation and category, per sentence its ref
    and tokens."""

    def __init__(self, max_tokens):
        self.max_tokens = max_tokens
        # Flat typed arrays (4 or 8 bytes per value): a list of small numpy arrays would cost about 0.5 KB
        # per sentence of conversion memory.
        self.image_ids, self.ref_ids, self.ref_images, self.ref_slots = (array.array("q") for _ in range(4))
        self.ref_ann_ids, self.ref_categories = array.array("q"), array.array("q")
        self.sent_ids, self.sent_refs = array.array("q"), array.array("q")
        self.input_ids, self.attention_mask = array.array("i"), array.array("i")

    def add_image(self, image_id, refs, tokens):
        """refs: the image's refs in stored order; tokens: per ref a list of (sent_id, ids, attention)."""
        row = len(self.image_ids)
        self.image_ids.append(image_id)
        for slot, (ref, sentences) in enumerate(zip(refs, tokens)):
            for sent_id, ids, attention in sentences:
                self.sent_ids.append(sent_id)
                self.sent_refs.append(len(self.ref_ids))
                self.input_ids.frombytes(np.asarray(ids, np.int32).tobytes())
                self.attention_mask.frombytes(np.asarray(attention, np.int32).tobytes())
            self.ref_ids.append(int(ref["ref_id"]))
            self.ref_images.append(row)
            self.ref_slots.append(slot)
            self.ref_ann_ids.append(int(ref.get("ann_id", -1)))
            self.ref_categories.append(int(ref.get("category_id", -1)))

    def save(self, path):
        tokens = (len(self.sent_ids), self.max_tokens)
        with atomic_path(path, suffix=".npz") as temp:
            np.savez(temp, layout=np.int64(LAYOUT_VERSION), max_tokens=np.int64(self.max_tokens),
                     image_ids=np.frombuffer(self.image_ids, np.int64),
                     ref_ids=np.frombuffer(self.ref_ids, np.int64),
                     ref_images=np.frombuffer(self.ref_images, np.int64),
                     ref_slots=np.frombuffer(self.ref_slots, np.int64),
                     ref_ann_ids=np.frombuffer(self.ref_ann_ids, np.int64),
                     ref_categories=np.frombuffer(self.ref_categories, np.int64),
                     sent_ids=np.frombuffer(self.sent_ids, np.int64), sent_refs=np.frombuffer(self.sent_refs, np.int64),
                     input_ids=np.frombuffer(self.input_ids, np.int32).reshape(tokens),
                     attention_mask=np.frombuffer(self.attention_mask, np.int32).reshape(tokens))


def encode_sentences(ref, tokenizer, max_tokens, stats):
    """[(sent_id, input_ids, attention_mask)] of a ref's sentences, counting empty and cut ones."""
    encoded = []
    for sentence in ref["sentences"]:
        raw = sentence["raw"] or ""
        input_ids, attention_mask, length = tokenizer.encode_with_length(raw, max_tokens)
        if length == 2:
            stats.empty.append(sentence["sent_id"])
        elif length > max_tokens:
            stats.truncated += 1
        encoded.append((int(sentence["sent_id"]), input_ids, attention_mask))
    return encoded


def refs_by_image(refs):
    """[(image_id, [refs of that image in ref_id order])] in image_id order."""
    ordered = sorted(refs, key=lambda ref: (ref["image_id"], ref["ref_id"]))
    return [(image_id, list(group)) for image_id, group in groupby(ordered, key=lambda ref: ref["image_id"])]


def iter_rows(refer, groups, tokenizer, index, skip_bad, stats):
    """MindRecord rows of `groups` (refs_by_image), one per image; fills `index` and `stats` on the way."""
    for image_id, image_refs in tqdm(groups, desc="images", unit="image", disable=None, leave=False):
        info = refer.image_info(image_id)
        try:
            image = read_image(refer.image_path(image_id), info["height"], info["width"])
        except DataError as err:
            if not skip_bad:
                raise
            stats.skipped += [(sentence["sent_id"], ref["ref_id"], image_id, str(err))
                              for ref in image_refs for sentence in ref["sentences"]]
            continue
        masks = [encode_mask(refer.ref_mask(ref)) for ref in image_refs]
        tokens = [encode_sentences(ref, tokenizer, index.max_tokens, stats) for ref in image_refs]
        index.add_image(image_id, image_refs, tokens)
        stats.images.add(image_id)
        stats.refs.update(ref["ref_id"] for ref in image_refs)
        stats.sentences += sum(len(ref["sentences"]) for ref in image_refs)
        stats.image_bytes += len(image)
        yield {"image_id": int(image_id), "height": int(info["height"]), "width": int(info["width"]),
               "image": image, "masks": b"".join(masks),
               "mask_ends": np.cumsum([len(mask) for mask in masks]).astype(np.int64),
               "ref_ids": np.array([ref["ref_id"] for ref in image_refs], np.int64),
               "sentences": json.dumps([sentence["raw"] or "" for ref in image_refs for sentence in ref["sentences"]],
                                       ensure_ascii=False)}


def check_unique_sent_ids(refs, name):
    seen = set()
    for ref in refs:
        for sentence in ref["sentences"]:
            if sentence["sent_id"] in seen:
                raise DataError(f"{name}: sent_id {sentence['sent_id']} occurs twice (it identifies a sample)")
            seen.add(sentence["sent_id"])


def next_power_of_two(value):
    return 1 << max(0, int(value) - 1).bit_length()


class FileLayout:
    """Header and page sizes of a file set from the blob bytes of each of its rows (image and masks)."""

    def __init__(self, row_blob_sizes, num_shards):
        sizes = list(row_blob_sizes) or [0]
        total = sum(sizes) + len(sizes) * RAW_BYTES_PER_ROW
        smallest_fit = next_power_of_two(2 * max(sizes))
        self.page_size = max(MIN_PAGE_SIZE, smallest_fit,
                             min(MAX_PAGE_SIZE, next_power_of_two(max(1, total // PAGES_PER_SET))))
        pages = total // self.page_size + 4 * num_shards + 4
        self.header_size = min(MAX_HEADER_SIZE, max(MIN_HEADER_SIZE,
                                                    next_power_of_two(pages * HEADER_BYTES_PER_PAGE)))

    @staticmethod
    def of_images(refer, groups):
        """Upper bounds of the rows' blob bytes: the image file, and per mask encode_mask's bound, plus
        the ref ids and mask ends."""
        sizes = []
        for image_id, image_refs in groups:
            path = refer.image_path(image_id)
            info = refer.image_info(image_id)
            mask_bound = mask_bytes_bound(info["height"], info["width"])
            sizes.append((os.path.getsize(path) if os.path.isfile(path) else 0)
                         + len(image_refs) * (mask_bound + 16))
        return sizes


def write_split(tmp_base, rows, num_shards, layout):
    """Write rows into a file set at tmp_base with the FileLayout's sizes; returns the number of rows."""
    writer = FileWriter(tmp_base, shard_num=num_shards, overwrite=True)
    writer.set_header_size(layout.header_size)
    writer.set_page_size(layout.page_size)
    writer.add_schema(record_schema(), f"CoupAlign referring segmentation, layout {LAYOUT_VERSION}")
    writer.add_index(["image_id"])
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


def publish(tmp_dir, final_base, side_files):
    """Replace the final file set (and its side files: index, manifest) by the one in tmp_dir; the first .db
    goes last, as the completion mark, and is the first old file removed."""
    old = mindrecord_files(final_base)
    marker_names = (final_base + ".db", final_base + "0.db")
    for path in sorted(old, key=lambda item: item not in marker_names):
        os.remove(path)
    for path in side_files:
        if os.path.exists(path):
            os.remove(path)
    folder = os.path.dirname(final_base)
    names = sorted(os.listdir(tmp_dir))
    markers = [name for name in names if os.path.join(folder, name) in marker_names]
    for name in [name for name in names if name not in markers] + markers:
        os.replace(os.path.join(tmp_dir, name), os.path.join(folder, name))
    shutil.rmtree(tmp_dir, ignore_errors=True)


def file_entry(path, with_sha256=True):
    entry = {"name": os.path.basename(path), "bytes": os.path.getsize(path)}
    if with_sha256:
        entry["sha256"] = file_sha256(path)
    return entry


def manifest_of(tmp_dir, split, stats, refer, config):
    """What the manifest of a set written in tmp_dir holds: counts, {name, bytes, sha256} of every file there
    and the sources' sizes (the vocab's sha256: two vocabs of one size give other tokens). Nothing depends on
    the time or the machine, so a rerun on the same input writes the same bytes."""
    return {
        "converter_version": CONVERTER_VERSION, "layout": LAYOUT_VERSION,
        "dataset": config.dataset, "split_by": config.split_by, "split": split,
        "rows": len(stats.images), "refs": len(stats.refs), "sentences": stats.sentences,
        "max_tokens": int(config.max_tokens),
        "files": [file_entry(os.path.join(tmp_dir, name)) for name in sorted(os.listdir(tmp_dir))],
        "sources": {"instances": file_entry(refer.instances_path, with_sha256=False),
                    "refs": file_entry(refer.refs_path, with_sha256=False),
                    "vocab": file_entry(config.vocab_file)},
    }


def write_manifest(path, manifest):
    with atomic_path(path) as temp, open(temp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


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
    groups = refs_by_image(refs)
    index = SplitIndex(int(config.max_tokens))
    final_index = index_path(config.mindrecord_dir, config.dataset, config.split_by, split)
    final_manifest = manifest_path(config.mindrecord_dir, config.dataset, config.split_by, split)
    try:
        rows = iter_rows(refer, groups, tokenizer, index, bool(config.skip_bad), stats)
        write_split(os.path.join(tmp_dir, os.path.basename(final_base)), rows, int(config.num_shards),
                    FileLayout(FileLayout.of_images(refer, groups), int(config.num_shards)))
        index.save(os.path.join(tmp_dir, os.path.basename(final_index)))
        manifest = manifest_of(tmp_dir, split, stats, refer, config)
        write_manifest(os.path.join(tmp_dir, os.path.basename(final_manifest)), manifest)
    except BaseException as err:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if isinstance(err, DataError) and stats.skipped and not stats.images:
            skipped_images = stats.skipped_counts()[2]
            raise DataError(f"{name}: all {skipped_images} images were skipped by --skip_bad (the first: "
                            f"{stats.skipped[0][3]}); nothing was written") from None
        raise
    publish(tmp_dir, final_base, [final_index, final_manifest])
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
    for key in ("refer_data_root", "image_root"):
        if not os.path.isdir(config[key]):
            raise ConfigError(f"--{key} {config[key]} is not a folder")
    if int(config.num_shards) < 1:
        raise ConfigError(f"--num_shards must be at least 1, got {config.num_shards}")
    try:
        check_output_folder(config.mindrecord_dir, "mindrecord_dir")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def build(config):
    """Convert every selected split; returns {split: SplitStats}."""
    check_config(config)
    tokenizer = build_tokenizer(config.vocab_file)
    if len(tokenizer) > int(config.vocab_size):
        print(f"WARNING: {config.vocab_file} has {len(tokenizer)} tokens but vocab_size is {config.vocab_size}; "
              "ids at or above vocab_size will not fit the text encoder", file=sys.stderr)
    refer = Refer(config.refer_data_root, config.dataset, config.split_by, config.image_root)
    if not refer.refs:
        raise DataError(f"{refer.refs_path} holds no refs: nothing to convert")
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
