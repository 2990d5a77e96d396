"""Reader for the REFER layout (RefCOCO, RefCOCO+, G-Ref).

<refer_data_root>/<dataset>/instances.json  COCO instances (images, annotations, categories)
<refer_data_root>/<dataset>/refs(<split_by>).p  pickled list of refs (written by Python 2)
"""
import os
import pickle

import numpy as np
from pycocotools import mask as mask_utils

from src.data.json_stream import JsonStreamError, iter_array_items
from src.data.pickle_stream import load_list_elements

DATASETS = ("refcoco", "refcoco+", "refcocog")
SPLIT_BYS = ("unc", "umd", "google")
SPLIT_ORDER = ("train", "val", "test", "testA", "testB", "testC")
REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


class ReferError(ValueError):
    """A REFER dataset file that is missing or cannot be used."""


def _to_text(value):
    """Python 2 byte strings (and dict keys) to str, recursively."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin1")
    if isinstance(value, dict):
        return {_to_text(key): _to_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_text(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_to_text(item) for item in value)
    return value


def load_refs_pickle(path, keep=None):
    """Load a refs(<split_by>).p file safely: plain data only, never code. `keep` maps each checked ref to
    what is kept of it; refs are read and converted one at a time (load_list_elements)."""
    if not os.path.isfile(path):
        raise ReferError(f"refs file not found: {path}")
    refs = []

    def add(ref):
        ref = _to_text(ref)
        _check_ref(ref, len(refs), path)
        refs.append(keep(ref) if keep else ref)

    with open(path, "rb") as handle:
        try:
            # 'bytes' keeps Python 2 str undecoded so UTF-8 text can be decoded properly by _to_text.
            top = load_list_elements(handle, add, encoding="bytes")
        except ReferError:
            raise
        except pickle.UnpicklingError as err:
            raise ReferError(f"unsafe or invalid refs file {path}: {err}") from err
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
            raise ReferError(f"cannot read refs file {path}: {type(err).__name__}: {err}") from err
    if not isinstance(top, list):
        raise ReferError(f"refs file {path} must hold a list of refs, not {type(top).__name__}")
    return refs


def _check_ref(ref, index, path):
    if not isinstance(ref, dict):
        raise ReferError(f"refs file {path}: entry {index} is a {type(ref).__name__}, not a dict")
    missing = [key for key in REF_KEYS if key not in ref]
    if missing:
        raise ReferError(f"refs file {path}: ref at index {index} lacks {', '.join(missing)}")
    for sentence in ref["sentences"]:
        if not isinstance(sentence, dict) or "sent_id" not in sentence or "raw" not in sentence:
            raise ReferError(f"refs file {path}: ref {ref['ref_id']} has a sentence without sent_id/raw")


def split_sort_key(split):
    """Canonical split order: train, val, test, testA, testB, then others by name."""
    if split in SPLIT_ORDER:
        return (SPLIT_ORDER.index(split), split)
    return (len(SPLIT_ORDER), split)


def file_tag(dataset):
    """Dataset name as used in file names ('refcoco+' -> 'refcocop')."""
    return dataset.replace("+", "p")


def segmentation_to_mask(segmentation, height, width):
    """Binary uint8 mask (H, W) of a COCO segmentation: polygons (summed, > 0) or RLE."""
    if isinstance(segmentation, list):
        polygons = [poly for poly in segmentation if len(poly) >= 6]
        if not polygons:
            return np.zeros((height, width), np.uint8)
        rles = mask_utils.frPyObjects(polygons, height, width)
        decoded = mask_utils.decode(rles)
        return (decoded.sum(axis=2, dtype=np.int32) > 0).astype(np.uint8)
    if isinstance(segmentation, dict):
        rle = segmentation
        if isinstance(rle.get("counts"), list):
            rle = mask_utils.frPyObjects(rle, height, width)
        elif isinstance(rle.get("counts"), str):
            rle = dict(rle, counts=rle["counts"].encode("ascii"))
        decoded = mask_utils.decode(rle)
        if decoded.ndim == 3:
            decoded = decoded.sum(axis=2, dtype=np.int32)
        return (decoded > 0).astype(np.uint8)
    raise ReferError(f"unsupported segmentation of type {type(segmentation).__name__}")


def _compact_ref(ref):
    """A ref as the converter needs it: ids, split and the sentences' sent_id and raw text (the pickle's
    tokens and normalised text are dropped: about three quarters of a ref's memory)."""
    compact = {key: ref[key] for key in ("ref_id", "ann_id", "image_id", "split", "category_id") if key in ref}
    compact["sentences"] = [{"sent_id": sentence["sent_id"], "raw": sentence["raw"]} for sentence in ref["sentences"]]
    return compact


def _compact_segmentation(segmentation):
    """Polygons as float64 arrays (a list of Python floats costs four times the bytes); RLE as it is."""
    if isinstance(segmentation, list):
        return [np.asarray(polygon, np.float64) for polygon in segmentation]
    return segmentation


class Refer:
    """Refs, annotations and images of one REFER dataset (dataset + split_by).

    Only what the refs use is kept: their images' file name and size and their annotations' segmentation,
    read from instances.json one element at a time, so memory follows the refs, not the instances file.
    """

    def __init__(self, refer_data_root, dataset="refcoco", split_by="unc", image_root=""):
        self.dataset = dataset
        self.split_by = split_by
        self.image_root = image_root
        self.data_dir = os.path.join(refer_data_root, dataset)
        if not os.path.isdir(self.data_dir):
            raise ReferError(f"dataset folder not found: {self.data_dir}")
        self.refs_path = os.path.join(self.data_dir, f"refs({split_by}).p")
        self.instances_path = os.path.join(self.data_dir, "instances.json")
        if not os.path.isfile(self.refs_path):
            raise ReferError(f"no refs file for split_by '{split_by}' in {self.data_dir}: "
                             f"expected {self.refs_path}")
        if not os.path.isfile(self.instances_path):
            raise ReferError(f"instances file not found: expected {self.instances_path}")
        self.refs = load_refs_pickle(self.refs_path, keep=_compact_ref)
        self.images, self.segmentations = self._load_instances()
        self._check_links()

    def _load_instances(self):
        """{image_id: {file_name, height, width}} and {ann_id: segmentation} of what the refs name."""
        image_ids = {ref["image_id"] for ref in self.refs}
        ann_ids = {ref["ann_id"] for ref in self.refs}
        images, segmentations = {}, {}
        try:
            for key, item in iter_array_items(self.instances_path, ("images", "annotations")):
                if not isinstance(item, dict) or "id" not in item:
                    raise ReferError(f"{self.instances_path}: an entry of '{key}' has no id")
                if key == "images" and item["id"] in image_ids:
                    images[item["id"]] = {name: item[name] for name in ("file_name", "height", "width")}
                elif key == "annotations" and item["id"] in ann_ids:
                    segmentations[item["id"]] = _compact_segmentation(item["segmentation"])
        except KeyError as err:
            raise ReferError(f"{self.instances_path}: an entry lacks {err}") from err
        except (JsonStreamError, UnicodeDecodeError) as err:
            raise ReferError(f"cannot read COCO instances {self.instances_path}: {err}") from err
        return images, segmentations

    def _check_links(self):
        for ref in self.refs:
            if ref["ann_id"] not in self.segmentations:
                raise ReferError(f"ref {ref['ref_id']}: annotation {ref['ann_id']} is not in {self.instances_path}")
            if ref["image_id"] not in self.images:
                raise ReferError(f"ref {ref['ref_id']}: image {ref['image_id']} is not in {self.instances_path}")

    def splits(self):
        """Splits present in the refs file, in canonical order."""
        return sorted({ref["split"] for ref in self.refs}, key=split_sort_key)

    def refs_of_split(self, split):
        """Refs of one split, sorted by ref_id (deterministic order)."""
        return sorted((ref for ref in self.refs if ref["split"] == split), key=lambda ref: ref["ref_id"])

    def image_info(self, image_id):
        return self.images[image_id]

    def image_path(self, image_id):
        """Image file named by instances.json (not by the ref's own file_name)."""
        return os.path.join(self.image_root, self.images[image_id]["file_name"])

    def ref_mask(self, ref):
        """Ground-truth binary mask (H, W) uint8 of a ref's annotation."""
        image = self.images[ref["image_id"]]
        return segmentation_to_mask(self.segmentations[ref["ann_id"]], image["height"], image["width"])

    def split_counts(self, split):
        """Number of refs, sentences and images of a split."""
        refs = self.refs_of_split(split)
        return {
            "refs": len(refs),
            "sentences": sum(len(ref["sentences"]) for ref in refs),
            "images": len({ref["image_id"] for ref in refs}),
        }
