"""Where a checkpoint's misses go: every sample of a split compared with every object of its image.

python -m src.tools.miss_analysis --config_path C --ckpt_path K --mindrecord_dir M --refer_data_root R
    [--eval_split val] [--examples 3] [--result_json misses.json]

The converted data keeps the masks of referred objects only, so validation's wrong_object_share cannot see a
prediction that lands on an object without a ref or of another category; this reads the REFER files
(refs(<split_by>).p and instances.json) for all objects of each image. Each sample, at the network input
(logit > 0, as eval.py), falls in one class of MISS_CLASSES.
"""
import argparse
import collections
import sys

import numpy as np
from tqdm import tqdm

from model_utils.config import config_or_exit, run_or_exit
from ..checkpoint import load_network_weights
from ..commands.eval import parse_splits
from ..context import setup_context
from ..data.dataset import check_token_ids, create_dataset, mask_at_input, raising_decode_errors
from ..data.json_stream import JsonStreamError, iter_array_items
from ..data.refer import Refer, ReferError, segmentation_to_mask
from ..evaluation import intersection_union, sample_ious
from ..files import check_output_file, write_json_atomic
from ..models.coupalign import CoupAlign

WRONG_OBJECT_IOU = (0.1, 0.5)  # IoU below the first with the target and above the second with another object
MISS_CLASSES = {
    "good": "IoU >= 0.9 with the target",
    "rough": "IoU 0.5-0.9 with the target",
    "empty": "nothing predicted",
    "wrong_same_category": "on another object of the target's category",
    "wrong_other_category": "on an object of another category",
    "merged": "more than half of the target, but less than half of the prediction on it",
    "partial": "at most half of the target, more than half of the prediction on it",
    "scattered": "pieces of several objects or of the background",
}


def _iou(a, b):
    """IoU of two masks (S, S), 0 when both are empty (as in evaluation)."""
    return float(sample_ious(*intersection_union(a[None], b[None]))[0])


def classify_miss(pred, target, others, same_category):
    """The MISS_CLASSES key of one sample. pred, target (S, S) bool; others: masks (S, S) bool of the other
    objects of the image; same_category: one bool per mask of `others`."""
    iou = _iou(pred, target)
    if iou >= 0.9:
        return "good"
    if iou >= 0.5:
        return "rough"
    predicted = pred.sum()
    if not predicted:
        return "empty"
    if iou < WRONG_OBJECT_IOU[0]:
        hits = [same for mask, same in zip(others, same_category) if _iou(pred, mask) > WRONG_OBJECT_IOU[1]]
        if hits:
            return "wrong_same_category" if any(hits) else "wrong_other_category"
    on_target = np.logical_and(pred, target).sum()
    target_share, pred_share = on_target / max(target.sum(), 1), on_target / predicted
    if target_share > 0.5 and pred_share < 0.5:
        return "merged"
    if target_share <= 0.5 and pred_share > 0.5:
        return "partial"
    return "scattered"


def image_objects(instances_path, image_ids):
    """{image_id: [(ann_id, category_id, segmentation)]} of every annotation of the given images."""
    objects = collections.defaultdict(list)
    try:
        for _, item in iter_array_items(instances_path, ("annotations",)):
            if item["image_id"] in image_ids:
                objects[item["image_id"]].append((item["id"], item.get("category_id", -1), item["segmentation"]))
    except (KeyError, TypeError) as err:
        raise ReferError(f"{instances_path}: an annotation lacks {err}") from err
    except (JsonStreamError, UnicodeDecodeError) as err:
        raise ReferError(f"cannot read COCO instances {instances_path}: {err}") from err
    return objects


class ImageObjects:
    """Masks at the network input of the objects of a split's images, from the REFER files."""

    def __init__(self, refer, split, image_size):
        self.refs = {ref["ref_id"]: ref for ref in refer.refs_of_split(split)}
        self.sentences = {sentence["sent_id"]: sentence["raw"] for ref in self.refs.values()
                          for sentence in ref["sentences"]}
        self.images = refer.images
        self.objects = image_objects(refer.instances_path, {ref["image_id"] for ref in self.refs.values()})
        self.image_size = image_size
        self._last = (None, None)  # evaluation reads a ref's sentences one after the other

    def others(self, ref_id):
        """(masks, same_category) of the objects of the ref's image other than its target."""
        if self._last[0] == ref_id:
            return self._last[1]
        ref = self.refs[ref_id]
        image = self.images[ref["image_id"]]
        masks, same = [], []
        for ann_id, category, segmentation in self.objects[ref["image_id"]]:
            if ann_id == ref["ann_id"]:
                continue
            bits = segmentation_to_mask(segmentation, image["height"], image["width"])
            masks.append(mask_at_input(bits, self.image_size)[0] > 0.5)
            same.append(category == ref.get("category_id", -2))
        self._last = (ref_id, (masks, same))
        return masks, same


def analyse_split(net, dataset, objects, examples):
    """{class: {count, share, examples}} over every sample of `dataset` (with ids), and the split's oIoU."""
    counts = collections.Counter()
    shown = collections.defaultdict(list)
    inter_total = union_total = 0
    batches = dataset.create_dict_iterator(num_epochs=1)
    with raising_decode_errors():
        # disable=None: a progress bar on a terminal, none in log files (as eval.py)
        for batch in tqdm(batches, total=dataset.get_dataset_size(), desc="classify", file=sys.stdout, leave=False,
                          disable=None):
            logits = net(batch["image"], batch["input_ids"], batch["attention_mask"]).asnumpy()
            preds, targets = logits[:, 0] > 0, batch["mask"].asnumpy()[:, 0] > 0.5
            inter, union = intersection_union(preds, targets)
            inter_total, union_total = inter_total + int(inter.sum()), union_total + int(union.sum())
            ref_ids = batch["ref_id"].asnumpy().reshape(-1).tolist()
            sent_ids = batch["sent_id"].asnumpy().reshape(-1).tolist()
            for pred, target, iou, ref_id, sent_id in zip(preds, targets, sample_ious(inter, union), ref_ids,
                                                          sent_ids):
                label = classify_miss(pred, target, *objects.others(ref_id))
                counts[label] += 1
                if len(shown[label]) < examples:
                    shown[label].append({"sentence": objects.sentences[sent_id], "iou": round(float(iou), 3)})
    total = sum(counts.values())
    if not total:
        raise ValueError("the split has no samples")
    classes = {label: {"count": counts[label], "share": counts[label] / total, "examples": shown[label]}
               for label in MISS_CLASSES}
    return {"oIoU": inter_total / max(union_total, 1), "num_samples": total, "classes": classes}


def format_classes(split, result):
    lines = [f"{split}: oIoU {result['oIoU']:.4f}, {result['num_samples']} samples",
             "| class | meaning | samples | share | e.g. (IoU) |", "|---|---|---|---|---|"]
    for label, entry in result["classes"].items():
        shown = "; ".join(f"\"{example['sentence']}\" ({example['iou']:.2f})" for example in entry["examples"])
        lines.append(f"| {label} | {MISS_CLASSES[label]} | {entry['count']} | {100 * entry['share']:.1f} % | {shown} |")
    return "\n".join(lines)


def analyse(config, split="", examples=3):
    """Classifies every sample of `split` (default: the first of --eval_splits); prints the table, writes
    --result_json if given -> the result of analyse_split."""
    if examples < 0:
        raise ValueError(f"--examples must be at least 0, got {examples}")
    if config.result_json:
        check_output_file(config.result_json, "result_json")
    if not config.refer_data_root:
        raise ValueError("--refer_data_root is needed: the folder with <dataset>/instances.json and "
                         "refs(<split_by>).p that the MindRecord was converted from")
    split = split or parse_splits(config)[0]
    refer = Refer(config.refer_data_root, config.dataset, config.split_by)
    if split not in refer.splits():
        raise ValueError(f"split '{split}' is not in {refer.refs_path} (it has {', '.join(refer.splits())})")
    objects = ImageObjects(refer, split, int(config.image_size))
    setup_context(config)
    check_token_ids(config, split)
    net = CoupAlign.from_config(config)
    load_network_weights(net, config.ckpt_path)
    net.set_train(False)
    dataset = create_dataset(config, split, training=False, with_ids=True)
    print(f"classifying the {split} predictions of {config.ckpt_path} against every object of their images",
          flush=True)
    result = analyse_split(net, dataset, objects, examples)
    print(format_classes(split, result))
    if config.result_json:
        write_json_atomic(config.result_json, {split: result})
        print(f"written to {config.result_json}")
    return result


def parse_tool_flags(argv):
    """(--eval_split, --examples, the remaining arguments for the config)."""
    parser = argparse.ArgumentParser(prog="python -m src.tools.miss_analysis", add_help=False)
    parser.add_argument("--eval_split", default="")
    parser.add_argument("--examples", type=int, default=3)
    options, rest = parser.parse_known_args(argv)
    return options.eval_split, options.examples, rest


def main(argv=None):
    split, examples, config_argv = parse_tool_flags(sys.argv[1:] if argv is None else argv)
    config = config_or_exit(config_argv)
    return run_or_exit(lambda checked: analyse(checked, split, examples), config)


if __name__ == "__main__":
    main()
