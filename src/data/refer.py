"""Reader for the REFER layout (RefCOCO, RefCOCO+, G-Ref).

<refer_data_root>/<dataset>/instances.json  COCO instances (images, annotations, categories)
<refer_data_root>/<dataset>/refs(<split_by>).p  pickled list of refs (written by Python 2)
"""
import contextlib
import io
import os
import pickle

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

DATASETS = ("refcoco", "refcoco+", "refcocog")
SPLIT_BYS = ("unc", "umd", "google")
SPLIT_ORDER = ("train", "val", "test", "testA", "testB", "testC")
REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


class ReferError(ValueError):
    """A REFER dataset file that is missing or cannot be used."""


class _PlainUnpickler(pickle.Unpickler):
    """Admits only the built-in plain types (dict, list, str, int, ...); no class, no call."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(
            f"refused to load '{module}.{name}': the refs file may only hold plain Python data "
            "(dict, list, str, int, float, tuple, bool, None)")


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


def load_refs_pickle(path):
    """Load a refs(<split_by>).p file safely: plain data only, never code."""
    if not os.path.isfile(path):
        raise ReferError(f"refs file not found: {path}")
    with open(path, "rb") as handle:
        try:
            # 'bytes' keeps Python 2 str undecoded so UTF-8 text can be decoded properly below.
            data = _PlainUnpickler(handle, encoding="bytes").load()
        except pickle.UnpicklingError as err:
            raise ReferError(f"unsafe or invalid refs file {path}: {err}") from err
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
            raise ReferError(f"cannot read refs file {path}: {type(err).__name__}: {err}") from err
    refs = _to_text(data)
    _check_refs(refs, path)
    return refs


def _check_refs(refs, path):
    if not isinstance(refs, list):
        raise ReferError(f"refs file {path} must hold a list of refs, not {type(refs).__name__}")
    for index, ref in enumerate(refs):
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


class Refer:
    """Refs, annotations and images of one REFER dataset (dataset + split_by)."""

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
        self.refs = load_refs_pickle(self.refs_path)
        self.coco = self._load_coco()
        self._check_links()

    def _load_coco(self):
        try:
            # pycocotools prints progress lines; keep the converter's output readable.
            with contextlib.redirect_stdout(io.StringIO()):
                return COCO(self.instances_path)
        except (ValueError, KeyError, TypeError) as err:
            raise ReferError(f"cannot read COCO instances {self.instances_path}: {err}") from err

    def _check_links(self):
        for ref in self.refs:
            if ref["ann_id"] not in self.coco.anns:
                raise ReferError(f"ref {ref['ref_id']}: annotation {ref['ann_id']} is not in {self.instances_path}")
            if ref["image_id"] not in self.coco.imgs:
                raise ReferError(f"ref {ref['ref_id']}: image {ref['image_id']} is not in {self.instances_path}")

    def splits(self):
        """Splits present in the refs file, in canonical order."""
        return sorted({ref["split"] for ref in self.refs}, key=split_sort_key)

    def refs_of_split(self, split):
        """Refs of one split, sorted by ref_id (deterministic order)."""
        return sorted((ref for ref in self.refs if ref["split"] == split), key=lambda ref: ref["ref_id"])

    def image_info(self, image_id):
        return self.coco.imgs[image_id]

    def image_path(self, image_id):
        """Image file named by instances.json (not by the ref's own file_name)."""
        return os.path.join(self.image_root, self.coco.imgs[image_id]["file_name"])

    def ref_mask(self, ref):
        """Ground-truth binary mask (H, W) uint8 of a ref's annotation."""
        ann = self.coco.anns[ref["ann_id"]]
        image = self.coco.imgs[ref["image_id"]]
        return segmentation_to_mask(ann["segmentation"], image["height"], image["width"])

    def split_counts(self, split):
        """Number of refs, sentences and images of a split."""
        refs = self.refs_of_split(split)
        return {
            "refs": len(refs),
            "sentences": sum(len(ref["sentences"]) for ref in refs),
            "images": len({ref["image_id"] for ref in refs}),
        }
