"""MindRecord input pipeline: decode, squash-resize, normalise; one sentence per ref in training.

A split is a MindRecord file set with one row per image (the image, its refs' masks) and an index
`<name>.index.npz` (refs and sentences with their tokens); the pipeline plans which sentence goes with
which image row in numpy and reads the rows in that order.

Batches: image float32 (B, 3, S, S) ImageNet-normalised, input_ids int32 (B, T),
attention_mask int32 (B, T), mask float32 (B, 1, S, S) in {0, 1}; with_ids=True adds
ref_id and sent_id int64 (B,).
"""
import contextlib
import json
import os
import re
import zipfile
import zlib

import cv2
import numpy as np
import mindspore.dataset as ds

from src.data.refer import file_tag
from src.files import file_sha256

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATA_COLUMNS = ["image", "input_ids", "attention_mask", "mask"]
# With original_masks=True: each sample's ground truth at its image's own size, zero-padded to the largest
# of the batch (B, Hmax, Wmax) uint8, and that size (B, 2) int32 as (height, width).
ORIGINAL_COLUMNS = ["original_mask", "original_size"]
ID_COLUMNS = ["ref_id", "sent_id"]
# With same_class_masks=True: the masks of up to MAX_SAME_CLASS other referred objects of the target's category
# in its image (B, K, S, S) uint8 in {0, 1}, zero where there are fewer, and how many there are (B,) int32
# (sets converted before the index held categories: 0, and a note).
SAME_CLASS_COLUMNS = ["same_class_masks", "same_class_count"]
MAX_SAME_CLASS = 8
# 1: one row per sentence (before the index file); 2: one row per image + index, PNG masks;
# 3: masks as zlib-compressed bits (encode_mask)
LAYOUT_VERSION = 3
INDEX_SUFFIX = ".index.npz"
MANIFEST_SUFFIX = ".manifest.json"


class LayoutError(ValueError):
    """A converted split this version cannot read (older layout, corrupt or mismatched index)."""


def mindrecord_name(dataset, split_by, split):
    """File-set name, e.g. 'refcocop_unc_testA' for refcoco+."""
    return f"{file_tag(dataset)}_{split_by}_{split}"


def mindrecord_path(mindrecord_dir, dataset, split_by, split):
    """Base path of a split's file set; one file keeps this name, K > 1 files add 0..K-1."""
    return os.path.join(mindrecord_dir, mindrecord_name(dataset, split_by, split) + ".mindrecord")


def index_path(mindrecord_dir, dataset, split_by, split):
    """The split's index (refs, sentences, tokens) that goes with its MindRecord file set."""
    return os.path.join(mindrecord_dir, mindrecord_name(dataset, split_by, split) + INDEX_SUFFIX)


def manifest_path(mindrecord_dir, dataset, split_by, split):
    """The split's manifest: counts, and the size and sha256 of every file of the set (see read_manifest)."""
    return os.path.join(mindrecord_dir, mindrecord_name(dataset, split_by, split) + MANIFEST_SUFFIX)


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


# ImageNet normalisation as one multiply-add per channel: (x / 255 - mean) / std = x * SCALE + OFFSET.
_CHANNEL_SCALE = tuple(1.0 / (255.0 * std) for std in IMAGENET_STD)
_CHANNEL_OFFSET = tuple(-mean / std for mean, std in zip(IMAGENET_MEAN, IMAGENET_STD))


class DecodeError(ValueError):
    """Stored bytes that do not decode as an image or a mask."""


@contextlib.contextmanager
def raising_decode_errors():
    """Re-raises a DecodeError of a pipeline worker, which MindSpore wraps in a RuntimeError with its stack, as
    the DecodeError itself, so that a bad stored image or mask ends the run with one line naming it."""
    try:
        yield
    except RuntimeError as err:
        found = re.search(r"DecodeError: (image_id [^\n]*)", str(err))
        if found is None:
            raise
        raise DecodeError(f"{found.group(1)}; the converted set is damaged: convert it again") from None


def _decode_bgr(image_bytes):
    """Encoded image bytes -> BGR uint8 (H, W, 3) (OpenCV's channel order); DecodeError when they do not decode."""
    buffer = np.frombuffer(image_bytes, np.uint8)  # bytes, or a pipeline's uint8 array without a copy
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if image is None:
        raise DecodeError("cannot decode the image bytes (corrupt or not an image)")
    return image


def decode_image(image_bytes):
    """Encoded image bytes -> RGB uint8 (H, W, 3)."""
    return cv2.cvtColor(_decode_bgr(image_bytes), cv2.COLOR_BGR2RGB)


def _normalise_into(image_uint8_hwc, image_size, out, bgr):
    """Bilinear squash of an (H, W, 3) uint8 image to S x S, normalised into out float32 (3, S, S) in RGB order.

    Per-channel cv2 calls on planes are about 2x faster than numpy's (x - mean) / std followed by a
    transpose, which matters: this is most of the pipeline's work per sample."""
    resized = cv2.resize(image_uint8_hwc, (image_size, image_size), interpolation=cv2.INTER_LINEAR)
    planes = cv2.split(resized)
    if bgr:
        planes = planes[::-1]
    for channel, plane in enumerate(planes):
        cv2.addWeighted(plane, _CHANNEL_SCALE[channel], plane, 0.0, _CHANNEL_OFFSET[channel],
                        dst=out[channel], dtype=cv2.CV_32F)
    return out


def preprocess_image(rgb_uint8_hwc, image_size):
    """RGB uint8 (H, W, 3) (or encoded bytes) -> float32 (3, S, S): bilinear squash + ImageNet norm."""
    out = np.empty((3, image_size, image_size), np.float32)
    if isinstance(rgb_uint8_hwc, (bytes, bytearray)):
        return _normalise_into(_decode_bgr(rgb_uint8_hwc), image_size, out, bgr=True)
    image = np.ascontiguousarray(rgb_uint8_hwc, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    return _normalise_into(image, image_size, out, bgr=False)


def encode_mask(mask):
    """(H, W) mask (nonzero = object) -> stored bytes: its bits row-major (np.packbits), zlib-compressed.

    Decoding is ~7x faster than a PNG of the same mask (0.15 vs 1.1 ms at 640x480) and the bytes are
    smaller; at worst (noise) they take zlib's bound of one bit per pixel plus a few bytes."""
    return zlib.compress(np.packbits(np.asarray(mask) > 0).tobytes(), 6)


def mask_bytes_bound(height, width):
    """Largest size encode_mask can give for an H x W mask (zlib's compressBound of the packed bits)."""
    packed = (int(height) * int(width) + 7) // 8
    return packed + (packed >> 12) + (packed >> 14) + (packed >> 25) + 13


def decode_mask_bits(mask_bytes, height, width):
    """Stored mask bytes -> uint8 (H, W) in {0, 1}; DecodeError when they are not an H x W mask."""
    try:
        packed = zlib.decompress(mask_bytes)
    except zlib.error as err:
        raise DecodeError(f"cannot decode a mask ({err})") from None
    if len(packed) != (height * width + 7) // 8:
        raise DecodeError(f"a mask holds {len(packed)} bytes, not those of a {width}x{height} mask")
    return np.unpackbits(np.frombuffer(packed, np.uint8), count=height * width).reshape(height, width)


def mask_at_input(bits, image_size):
    """uint8 (H, W) mask -> float32 (1, S, S) in {0, 1}, the ground truth at the network's input (nearest)."""
    return cv2.resize(bits, (image_size, image_size), interpolation=cv2.INTER_NEAREST).astype(np.float32)[None]


def decode_mask(mask_bytes, height, width, image_size=None):
    """Stored mask bytes -> float32 (1, S, S) in {0, 1} (mask_at_input); (1, H, W) when size is None."""
    bits = decode_mask_bits(mask_bytes, int(height), int(width))
    if image_size is not None:
        return mask_at_input(bits, image_size)
    return bits.astype(np.float32)[None]


def ref_mask_bytes(masks, mask_ends, slot):
    """The stored mask of the image's ref number `slot` out of a row's concatenated masks."""
    start = int(mask_ends[slot - 1]) if slot > 0 else 0
    return np.asarray(masks).tobytes()[start:int(mask_ends[slot])]


class SplitTable:
    """A split's index (written by the converter next to its MindRecord): one entry per image row, per ref
    (ref_ids, ref_images = its image row, ref_slots = its place among that row's masks) and per sentence
    (sent_ids, sent_refs = its ref's entry, input_ids and attention_mask (S, T)). Sentences are stored
    grouped by ref, refs grouped by image row. Per ref also its annotation and category (OPTIONAL_FIELDS: None
    in sets converted before they were stored)."""

    FIELDS = ("image_ids", "ref_ids", "ref_images", "ref_slots", "sent_ids", "sent_refs", "input_ids",
              "attention_mask")
    OPTIONAL_FIELDS = ("ref_ann_ids", "ref_categories")

    def __init__(self, arrays):
        for name in self.FIELDS:
            setattr(self, name, arrays[name])
        for name in self.OPTIONAL_FIELDS:
            setattr(self, name, arrays.get(name))
        self.ref_first_sent = np.searchsorted(self.sent_refs, np.arange(len(self.ref_ids)))
        self.ref_num_sents = np.bincount(self.sent_refs, minlength=len(self.ref_ids))

    def ref_entries(self, image_row):
        """Entries of the refs of an image row, in the order of its masks (refs are grouped by image row)."""
        return range(int(np.searchsorted(self.ref_images, image_row, side="left")),
                     int(np.searchsorted(self.ref_images, image_row, side="right")))

    def sent_entries(self, ref_entry):
        """Entries of a ref's sentences."""
        first = int(self.ref_first_sent[ref_entry])
        return range(first, first + int(self.ref_num_sents[ref_entry]))

    @property
    def knows_categories(self):
        return self.ref_categories is not None and self.ref_ann_ids is not None

    def same_class_slots(self, image_row, ref_slot):
        """Mask slots of the other referred objects (other annotations) of the category of the ref in `ref_slot`
        of an image row, in slot order; [] when the index has no categories."""
        if not self.knows_categories:
            return []
        entries = self.ref_entries(image_row)
        target = entries[ref_slot]
        category, ann_id = int(self.ref_categories[target]), int(self.ref_ann_ids[target])
        if category < 0:  # a ref without category_id
            return []
        slots, seen = [], {ann_id}
        for slot, entry in enumerate(entries):
            other_ann = int(self.ref_ann_ids[entry])
            if int(self.ref_categories[entry]) == category and other_ann not in seen:
                seen.add(other_ann)
                slots.append(slot)
        return slots

    def describe(self, image_row, ref_slot=None):
        """'image_id I' of an image row, with ', ref_id R' of the ref in `ref_slot` of that row's masks."""
        text = f"image_id {int(self.image_ids[image_row])}"
        if ref_slot is None:
            return text
        return f"{text}, ref_id {int(self.ref_ids[self.ref_entries(image_row)[ref_slot]])}"

    def training_plan(self, seed, epoch, rank_id, group_size):
        """Sentence entries of this rank's share of an epoch: every ref once in an order drawn from
        (seed, epoch), with one of its sentences drawn from the same generator; the order is cut r::G
        after wrapping it to a multiple of G, so each rank gets ceil(refs / G)."""
        rng = np.random.default_rng([abs(int(seed)), int(epoch)])
        order = rng.permutation(len(self.ref_ids))
        draws = rng.random(len(self.ref_ids))
        chosen = self.ref_first_sent + np.minimum((draws * self.ref_num_sents).astype(np.int64),
                                                  self.ref_num_sents - 1)
        padded = np.concatenate([order, order[:(-len(order)) % group_size]])
        return chosen[padded[rank_id::group_size]]

    def evaluation_plan(self, rank_id, group_size):
        """Sentence entries of this rank in stored order: all sentences of image rows r, r + G, ..."""
        return np.flatnonzero(self.ref_images[self.sent_refs] % group_size == rank_id)

    def sample_columns(self, sentences):
        """Per-sentence columns of the plan `sentences` (entries of this table)."""
        refs = self.sent_refs[sentences]
        return {"image_row": self.ref_images[refs], "ref_slot": self.ref_slots[refs],
                "input_ids": self.input_ids[sentences], "attention_mask": self.attention_mask[sentences],
                "ref_id": self.ref_ids[refs], "sent_id": self.sent_ids[sentences]}


_TABLES = {}  # (state of the set's files, checksums checked) -> SplitTable
MAX_CACHED_TABLES = 8  # a training run alternates between its train and val sets
DATA_CHECKS = ("sha256", "sizes")
CHECKSUM_NOTE_BYTES = 512 * 1024 * 1024


def reconvert_hint(dataset, split_by, mindrecord_dir):
    return (f"reconvert it with: python -m src.data.build_mindrecord --dataset {dataset} "
            f"--split_by {split_by} --mindrecord_dir {mindrecord_dir} ...")


def verify_hint(mindrecord_dir):
    return f"check it with: python -m src.data.verify --mindrecord_dir {mindrecord_dir}"


def read_manifest(manifest_file, first_file, hint):
    """The manifest the converter wrote next to a file set (a dict, see build_mindrecord.manifest_of);
    LayoutError when it is missing (a set written by an older converter) or unreadable."""
    if not os.path.isfile(manifest_file):
        raise LayoutError(f"{first_file} has no manifest {os.path.basename(manifest_file)}: it was written by an "
                          f"older converter (before manifests); {hint}")
    try:
        with open(manifest_file, encoding="utf-8") as handle:
            manifest = json.load(handle)
        if not isinstance(manifest.get("files"), list) or not isinstance(manifest.get("rows"), int):
            raise ValueError("no files or rows")
    except (OSError, ValueError, AttributeError) as err:
        raise LayoutError(f"{manifest_file} is corrupt or incomplete ({err}); {hint}") from None
    return manifest


def set_state(manifest_file, manifest, index_file):
    """(path, mtime, size) of the manifest, the index and every file the manifest lists (None when absent):
    a set that has not changed since it was checked has the same state."""
    folder = os.path.dirname(manifest_file)
    paths = [manifest_file, index_file] + [os.path.join(folder, entry["name"]) for entry in manifest["files"]]
    state = []
    for path in paths:
        try:
            stat = os.stat(path)
            state.append((os.path.abspath(path), stat.st_mtime_ns, stat.st_size))
        except OSError:
            state.append((os.path.abspath(path), None))
    return tuple(state)


def read_index(index_file, hint):
    """The SplitTable of an index file of this layout; LayoutError when it is of another layout or corrupt."""
    try:
        with np.load(index_file, allow_pickle=False) as arrays:
            layout = int(arrays["layout"])
            if layout != LAYOUT_VERSION:
                raise LayoutError(f"{index_file} is data layout {layout}, this version reads layout "
                                  f"{LAYOUT_VERSION}; {hint}")
            names = SplitTable.FIELDS + tuple(name for name in SplitTable.OPTIONAL_FIELDS if name in arrays)
            return SplitTable({name: arrays[name] for name in names})
    except LayoutError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise LayoutError(f"{index_file} is corrupt or incomplete ({err}); {hint}") from None


def manifest_problems(manifest, folder, checksums):
    """A line for every file the manifest lists that is missing, of another size or (with `checksums`) of
    another sha256: a truncated copy, an interrupted download, bytes appended or damaged in place."""
    problems = []
    for entry in manifest["files"]:
        path = os.path.join(folder, entry["name"])
        if not os.path.isfile(path):
            problems.append(f"{path} is missing (its manifest lists it, {entry['bytes']} bytes)")
        elif os.path.getsize(path) != entry["bytes"]:
            problems.append(f"{path} is {os.path.getsize(path)} bytes, its manifest says {entry['bytes']}: "
                            "the file is damaged or incomplete")
        elif checksums and file_sha256(path) != entry.get("sha256"):
            problems.append(f"{path}: its sha256 differs from its manifest (the file's bytes are damaged)")
    return problems


def check_manifest_files(manifest, manifest_file, hint, checksums):
    """LayoutError naming the first problem of manifest_problems (the sizes first: cheap)."""
    if manifest.get("layout") != LAYOUT_VERSION:
        raise LayoutError(f"{manifest_file} describes data layout {manifest.get('layout')}, this version reads "
                          f"layout {LAYOUT_VERSION}; {hint}")
    folder = os.path.dirname(manifest_file)
    problems = manifest_problems(manifest, folder, False)
    if not problems and checksums:
        total = sum(entry["bytes"] for entry in manifest["files"])
        if total > CHECKSUM_NOTE_BYTES:
            print(f"data: checking the sha256 of {os.path.basename(manifest_file)[:-len(MANIFEST_SUFFIX)]} "
                  f"({total / 1e9:.1f} GB; --data_check sizes skips it)", flush=True)
        problems = manifest_problems(manifest, folder, True)
    if problems:
        raise LayoutError(f"{problems[0]}; {verify_hint(folder)}, or {hint}")


def check_row_count(rows, source, first_file, index_file, table, hint):
    if rows != len(table.image_ids):
        raise LayoutError(f"{first_file} holds {rows} images but its index {index_file} lists "
                          f"{len(table.image_ids)} (image count of {source}); {hint}")


def load_split_table(first_file, index_file, manifest_file, hint, checksums=False):
    """The SplitTable of a complete file set, checked against it and its manifest (sizes and counts; with
    `checksums` every file's sha256 too, since MindSpore can crash natively on bytes damaged in place);
    LayoutError when the index or the manifest is missing (a set written by an older converter), of another
    layout, corrupt, not the set's, or when a file is missing, of another size or of another sha256."""
    if not os.path.isfile(index_file):
        raise LayoutError(f"{first_file} has no index {os.path.basename(index_file)}: it was written by an older "
                          f"converter (one row per sentence, layout 1); {hint}")
    manifest = read_manifest(manifest_file, first_file, hint)
    key = (set_state(manifest_file, manifest, index_file), bool(checksums))
    if key not in _TABLES:
        table = read_index(index_file, hint)
        check_row_count(manifest["rows"], "the manifest", first_file, index_file, table, hint)
        check_manifest_files(manifest, manifest_file, hint, checksums)
        # Only once the files match: MindSpore can crash natively on a truncated or damaged file.
        rows = ds.MindDataset(first_file, columns_list=["image_id"], shuffle=False).get_dataset_size()
        check_row_count(rows, "the MindRecord header", first_file, index_file, table, hint)
        if len(_TABLES) >= MAX_CACHED_TABLES:
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[key] = table
    return _TABLES[key]


def split_table(config, split):
    """(first MindRecord file, SplitTable) of a split; clear errors when it is missing, outdated or damaged."""
    first_file = find_mindrecord(config.mindrecord_dir, config.dataset, config.split_by, split)
    hint = reconvert_hint(config.dataset, config.split_by, config.mindrecord_dir)
    index_file = index_path(config.mindrecord_dir, config.dataset, config.split_by, split)
    manifest_file = manifest_path(config.mindrecord_dir, config.dataset, config.split_by, split)
    if config.data_check not in DATA_CHECKS:
        raise ValueError(f"data_check must be one of {', '.join(DATA_CHECKS)}, got '{config.data_check}'")
    return first_file, load_split_table(first_file, index_file, manifest_file, hint,
                                        checksums=config.data_check == "sha256")


def _planned_source(first_file, table, sentences, workers):
    """The image rows of the planned sentences, read in plan order, zipped with the sentences' columns."""
    columns = table.sample_columns(sentences)
    # MindDataset refuses a sampler with more indices than rows, so a plan that visits images several
    # times (one entry per ref or per sentence) is read as a concatenation of pieces of at most that many.
    rows = columns["image_row"].tolist()
    piece = max(1, len(table.image_ids))
    pieces = [ds.MindDataset(first_file, columns_list=["image", "masks", "mask_ends", "height", "width"],
                             sampler=ds.SubsetSampler(rows[start:start + piece]), num_parallel_workers=workers)
              for start in range(0, max(1, len(rows)), piece)]
    records = pieces[0] if len(pieces) == 1 else pieces[0].concat(pieces[1:])
    samples = ds.NumpySlicesDataset(columns, column_names=list(columns), shuffle=False)
    return ds.zip((records, samples))


BATCH_INPUT_COLUMNS = ["image", "masks", "mask_ends", "height", "width", "image_row", "ref_slot"]


class _DecodeBatchOp:
    """per_batch_map of both pipelines: a batch's rows -> images (3, S, S) and the refs' masks (1, S, S), with
    ORIGINAL_COLUMNS and SAME_CLASS_COLUMNS when asked for.
    One Python call per batch (a per-sample Python map costs ~2 ms of overhead per sample); an image (and
    a ref's mask) that several samples of the batch share is decoded and resized once."""

    def __init__(self, image_size, table, original_masks=False, same_class_masks=False):
        self.image_size = image_size
        self.table = table  # to name an image or mask that does not decode
        self.original_masks = original_masks
        self.same_class_masks = same_class_masks

    def _mask_bits(self, masks, mask_ends, row, slot, height, width):
        try:
            return decode_mask_bits(ref_mask_bytes(masks, mask_ends, slot), height, width)
        except DecodeError as err:
            raise DecodeError(f"{self.table.describe(row, slot)}: {err}") from None

    def __call__(self, images, masks, mask_ends, heights, widths, image_rows, ref_slots, batch_info):
        size = self.image_size
        out_images = np.empty((len(images), 3, size, size), np.float32)
        out_masks = np.empty((len(images), 1, size, size), np.float32)
        if self.original_masks:
            sizes = np.stack([np.asarray(heights, np.int32).reshape(-1), np.asarray(widths, np.int32).reshape(-1)], 1)
            originals = np.zeros((len(images), int(sizes[:, 0].max()), int(sizes[:, 1].max())), np.uint8)
        if self.same_class_masks:
            same_class = np.zeros((len(images), MAX_SAME_CLASS, size, size), np.uint8)
            same_class_count = np.zeros(len(images), np.int32)
        first_of_row, first_of_ref, at_input = {}, {}, {}
        for sample, (row, slot) in enumerate(zip(image_rows, ref_slots)):
            row, slot = int(row), int(slot)
            height, width = int(heights[sample]), int(widths[sample])
            if row in first_of_row:
                out_images[sample] = out_images[first_of_row[row]]
            else:
                first_of_row[row] = sample
                try:
                    image = _decode_bgr(images[sample])
                except DecodeError as err:
                    raise DecodeError(f"{self.table.describe(row)}: {err}") from None
                _normalise_into(image, size, out_images[sample], bgr=True)
            if (row, slot) in first_of_ref:
                out_masks[sample] = out_masks[first_of_ref[(row, slot)]]
            else:
                first_of_ref[(row, slot)] = sample
                bits = self._mask_bits(masks[sample], mask_ends[sample], row, slot, height, width)
                out_masks[sample] = mask_at_input(bits, size)
                if self.original_masks:
                    originals[sample, :bits.shape[0], :bits.shape[1]] = bits
            if self.original_masks and first_of_ref[(row, slot)] != sample:
                originals[sample] = originals[first_of_ref[(row, slot)]]
            if self.same_class_masks:
                others = self.table.same_class_slots(row, slot)
                same_class_count[sample] = len(others)
                for place, other in enumerate(others[:MAX_SAME_CLASS]):
                    if (row, other) not in at_input:
                        bits = self._mask_bits(masks[sample], mask_ends[sample], row, other, height, width)
                        at_input[(row, other)] = mask_at_input(bits, size)[0] > 0.5
                    same_class[sample, place] = at_input[(row, other)]
        # Whole arrays rather than lists of samples: MindSpore then takes each column in one copy (~2x faster).
        outputs = (out_images, out_masks)
        if self.original_masks:
            outputs += (originals, sizes)
        if self.same_class_masks:
            outputs += (same_class, same_class_count)
        return outputs


_LOWERED_WORKERS = set()
_NO_CATEGORY_NOTES = set()


def pipeline_workers(requested):
    """num_parallel_workers capped at the CPUs this process may use (MindSpore refuses more than the machine
    has), with a note the first time it is lowered."""
    available = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        available = min(available, len(os.sched_getaffinity(0)))
    requested = max(1, int(requested))
    if requested <= available:
        return requested
    if requested not in _LOWERED_WORKERS:
        _LOWERED_WORKERS.add(requested)
        print(f"note: num_parallel_workers {requested} lowered to {available}, the CPUs this process can use",
              flush=True)
    return available


def create_dataset(config, split, training, rank_id=0, group_size=1, with_ids=False, epoch=0, skip_batches=0,
                   original_masks=False, same_class_masks=False):
    """Batched pipeline of one epoch of a split's MindRecord.

    training: the plan of SplitTable.training_plan for (seed, `epoch`, rank): one random sentence per ref,
    batch_size, drop_remainder=True; its first `skip_batches` batches are left out (so a run resumed at an
    epoch, or in the middle of one, sees the data a straight run would).
    evaluation: every sentence in stored order (image by image), last batch may be smaller,
    eval_batch_size; with group_size > 1 rank r reads the sentences of images r, r + G, ... (every sentence
    exactly once overall).
    original_masks: also ORIGINAL_COLUMNS (evaluation at the images' own sizes).
    same_class_masks: also SAME_CLASS_COLUMNS (the wrong-object diagnostic), after the original ones.
    """
    if not 0 <= rank_id < group_size:
        raise ValueError(f"rank_id {rank_id} must be in [0, {group_size})")
    first_file, table = split_table(config, split)
    image_size = int(config.image_size)
    workers = pipeline_workers(config.num_parallel_workers)
    batch_size = int(config.batch_size if training else config.eval_batch_size)
    if training:
        plan = table.training_plan(config.seed, epoch, rank_id, group_size)
        plan = plan[:len(plan) // batch_size * batch_size][max(0, skip_batches) * batch_size:]
    else:
        plan = table.evaluation_plan(rank_id, group_size)
    cv2.setNumThreads(1)  # the pipeline's workers are the parallelism; OpenCV's own threads would oversubscribe
    data = _planned_source(first_file, table, plan, workers)
    if same_class_masks and not table.knows_categories and first_file not in _NO_CATEGORY_NOTES:
        _NO_CATEGORY_NOTES.add(first_file)
        print(f"note: {first_file} was converted before the index held categories: no wrong-object diagnostic "
              f"(reconvert it to have one)", flush=True)
    extra = (ORIGINAL_COLUMNS if original_masks else []) + (SAME_CLASS_COLUMNS if same_class_masks else [])
    data = data.batch(batch_size, drop_remainder=training, num_parallel_workers=workers,
                      per_batch_map=_DecodeBatchOp(image_size, table, original_masks, same_class_masks),
                      input_columns=BATCH_INPUT_COLUMNS, output_columns=["image", "mask"] + extra)
    return data.project(DATA_COLUMNS + (ID_COLUMNS if with_ids else []) + extra)


def eval_sample_ids(config, split, rank_id=0, group_size=1):
    """(ref_id, sent_id) arrays in the order create_dataset(training=False) yields the samples."""
    _, table = split_table(config, split)
    columns = table.sample_columns(table.evaluation_plan(rank_id, group_size))
    return columns["ref_id"], columns["sent_id"]


def check_token_ids(config, split):
    """Raises ValueError when a stored token id is >= config.vocab_size (a vocab.txt other than the
    model's was used for conversion); an out-of-range id would otherwise fail inside the graph."""
    first_file, table = split_table(config, split)
    largest = int(table.input_ids.max()) if table.input_ids.size else -1
    if largest >= config.vocab_size:
        raise ValueError(f"{first_file} holds token id {largest}, but the model's vocab_size is {config.vocab_size}: "
                         "convert with the vocab.txt that matches the text encoder, or set --vocab_size")
