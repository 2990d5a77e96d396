"""Evaluation: predictions of a network over a split, accumulated into the protocol's metrics
(overall IoU, mean IoU and precision at IoU thresholds)."""
import json
import sys

import cv2
import numpy as np
from tqdm import tqdm

from .data.dataset import raising_decode_errors

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
# input: prediction and ground truth at the network's S x S input (LAVT's protocol); original: the logits
# resized bilinearly to each image's own size, against the mask at that size (CRIS's protocol).
RESOLUTIONS = ("input", "original")
EVAL_RESOLUTIONS = {"input": ("input",), "original": ("original",), "both": RESOLUTIONS}


def resolutions_of(setting):
    """eval_resolution (input | original | both) -> the resolutions to evaluate, in report order."""
    if setting not in EVAL_RESOLUTIONS:
        raise ValueError(f"eval_resolution must be one of {', '.join(EVAL_RESOLUTIONS)}, got '{setting}'")
    return EVAL_RESOLUTIONS[setting]


def intersection_union(pred, target):
    """Per-sample |P and G| and |P or G| of boolean masks (B, ...) -> two int64 arrays (B,)."""
    pred = np.asarray(pred, bool).reshape(len(pred), -1)
    target = np.asarray(target, bool).reshape(len(target), -1)
    return (pred & target).sum(axis=1).astype(np.int64), (pred | target).sum(axis=1).astype(np.int64)


def original_intersection_union(logits, original_masks, original_sizes):
    """Per-sample |P and G|, |P or G| at each image's own size: logits (B, 1, S, S) resized bilinearly to
    (H, W) and thresholded at 0, against the ground truth (B, Hmax, Wmax) cut to (H, W) -> two int64 (B,)."""
    inter = np.zeros(len(logits), np.int64)
    union = np.zeros(len(logits), np.int64)
    for sample, (height, width) in enumerate(np.asarray(original_sizes).tolist()):
        pred = cv2.resize(logits[sample, 0], (width, height), interpolation=cv2.INTER_LINEAR) > 0
        target = original_masks[sample, :height, :width] > 0
        inter[sample] = np.count_nonzero(pred & target)
        union[sample] = np.count_nonzero(pred | target)
    return inter, union


class RefSegMetrics:
    """Accumulates per-sample intersections and unions over a split."""

    def __init__(self):
        self.intersections = []
        self.unions = []

    def add_counts(self, inter, union):
        """Adds per-sample |P and G|, |P or G| (int arrays (B,)); returns the per-sample IoUs (0 where the
        union is empty)."""
        inter, union = np.asarray(inter, np.int64), np.asarray(union, np.int64)
        self.intersections.append(inter)
        self.unions.append(union)
        return sample_ious(inter, union)

    def update(self, pred, target):
        """Adds a batch of boolean masks; returns the per-sample IoUs."""
        return self.add_counts(*intersection_union(pred, target))

    def result(self):
        """{'oIoU', 'mIoU', 'prec@0.5'..'prec@0.9', 'num_samples'} with fractions in [0, 1]."""
        inter = np.concatenate(self.intersections) if self.intersections else np.zeros(0, np.int64)
        union = np.concatenate(self.unions) if self.unions else np.zeros(0, np.int64)
        ious = sample_ious(inter, union)
        total_union = union.sum()
        result = {"oIoU": float(inter.sum() / total_union) if total_union > 0 else 0.0,
                  "mIoU": float(ious.mean()) if len(ious) else 0.0}
        for threshold in THRESHOLDS:
            result[f"prec@{threshold}"] = float((ious >= threshold).mean()) if len(ious) else 0.0
        result["num_samples"] = int(len(ious))
        return result


def sample_ious(inter, union):
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def flat_results(results):
    """{split: metrics} or {split: {resolution: metrics}} -> [(row label, metrics)], e.g. 'val (original)'."""
    rows = []
    for split, metrics in results.items():
        if "oIoU" in metrics:
            rows.append((split, metrics))
        else:
            rows += [(f"{split} ({resolution})", by_resolution) for resolution, by_resolution in metrics.items()]
    return rows


def format_table(results, resolution_note=""):
    """Markdown table of {split: metrics} (or {split: {resolution: metrics}}) in percent."""
    columns = ["oIoU", "mIoU"] + [f"prec@{t}" for t in THRESHOLDS]
    lines = ["| split | " + " | ".join(columns) + " | samples |",
             "|---" * (len(columns) + 2) + "|"]
    for label, metrics in flat_results(results):
        cells = " | ".join(f"{100 * metrics[c]:.2f}" for c in columns)
        lines.append(f"| {label} | {cells} | {metrics['num_samples']} |")
    if resolution_note:
        lines.append(resolution_note)
    return "\n".join(lines)

# Diagnostics of the N proposals, per sample, at the proposals' resolution (DIAGNOSTICS in this order):
# proposal_pairwise_iou: mean IoU over the pairs of binarised proposals (1: all alike, no diversity);
# sma_weight_entropy: entropy of the SMA weights / log N (0: one proposal takes all, 1: uniform);
# best_proposal_iou: the best single proposal's IoU with the target (is the right object among them?);
# combined_iou: the IoU of their SMA combination M, to compare with it.
DIAGNOSTICS = ("proposal_pairwise_iou", "sma_weight_entropy", "best_proposal_iou", "combined_iou")
# With the same-class masks of the data (SAME_CLASS_COLUMNS), per sample at the input resolution: wrong_object
# (1: IoU < WRONG_OBJECT_TARGET_IOU with the target and > WRONG_OBJECT_OTHER_IOU with another referred object
# of its category in the image) and has_same_class (1: there is such an object); wrong_object_share is the
# share of wrong_object among the samples with has_same_class.
SAME_CLASS_DIAGNOSTICS = ("wrong_object", "has_same_class")
WRONG_OBJECT_TARGET_IOU = 0.1
WRONG_OBJECT_OTHER_IOU = 0.5
FIXED_POINT = 10 ** 9  # diagnostics travel between ranks in the int64 rows of RankGroup.gather_rows


def _iou(a, b, empty):
    """IoU of boolean masks over their last two axes; `empty` where both are empty."""
    inter = np.logical_and(a, b).sum(axis=(-2, -1))
    union = np.logical_or(a, b).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), empty)


def proposal_diagnostics(proposals, weights, combined, target):
    """DIAGNOSTICS per sample: proposals Y (B, N, h, w) and M (B, 1, h, w) logits (> 0 is object), SMA weights
    (B, N), target (B, h, w) bool -> float64 (B, 4)."""
    binary = proposals > 0
    count = binary.shape[1]
    pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
    pairwise = (np.mean([_iou(binary[:, i], binary[:, j], 1.0) for i, j in pairs], axis=0) if pairs
                else np.ones(len(binary)))
    clipped = np.clip(weights, 1e-12, 1.0)
    entropy = -(weights * np.log(clipped)).sum(axis=1) / np.log(count) if count > 1 else np.zeros(len(binary))
    best = _iou(binary, target[:, None], 0.0).max(axis=1)
    return np.stack([pairwise, entropy, best, _iou(combined[:, 0] > 0, target, 0.0)], axis=1)


def wrong_object_diagnostics(pred, target, same_class, count):
    """SAME_CLASS_DIAGNOSTICS per sample: predicted and target masks (B, S, S) bool, the other same-class
    objects (B, K, S, S) (empty where fewer than K) and their number (B,) -> float64 (B, 2)."""
    on_target = _iou(pred, target, 1.0)
    on_others = _iou(pred[:, None], same_class > 0, 0.0).max(axis=1) if same_class.shape[1] else np.zeros(len(pred))
    wrong = (on_target < WRONG_OBJECT_TARGET_IOU) & (on_others > WRONG_OBJECT_OTHER_IOU)
    return np.stack([wrong, count > 0], axis=1).astype(np.float64)


def diagnostics_summary(names, rows):
    """Means over the samples of the diagnostics `names` in the columns of rows (already / FIXED_POINT), with
    the wrong-object pair turned into wrong_object_share (absent when no sample has a same-class object)."""
    columns = dict(zip(names, rows.T))
    summary = {name: float(columns[name].mean()) for name in DIAGNOSTICS}
    if "has_same_class" in columns and columns["has_same_class"].sum() > 0:
        summary["wrong_object_share"] = float(columns["wrong_object"].sum() / columns["has_same_class"].sum())
    return summary


def low_resolution_target(mask, height, width):
    """Ground truth (B, 1, S, S) in {0, 1} -> (B, h, w) bool: the cells the object covers at least half of (as
    the auxiliary loss sees it; models.losses.mask_coverage)."""
    return np.stack([cv2.resize(sample[0].astype(np.float32), (width, height), interpolation=cv2.INTER_AREA) >= 0.5
                     for sample in mask])


_INSPECTIONS = {}  # id(net) -> (net, its WithProposals): one wrapper, so one compiled graph, per network


def inspection_of(net):
    from .models.inspection import WithProposals  # pylint: disable=import-outside-toplevel
    if id(net) not in _INSPECTIONS:
        _INSPECTIONS[id(net)] = (net, WithProposals(net))
    return _INSPECTIONS[id(net)][1]


def predict_counts(net, dataset, description="eval", resolutions=("input",), diagnostics=False):
    """Runs `net` over every batch of `dataset` (image, input_ids, attention_mask, mask, ref_id, sent_id, and
    original_mask, original_size for the original resolution, then SAME_CLASS_COLUMNS if the dataset has them)
    -> {resolution: int64 (n, 4) rows [ref_id, sent_id, intersection, union]}, in the dataset's order; with
    `diagnostics` also "diagnostics": int64 rows [ref_id, sent_id, DIAGNOSTICS (+ SAME_CLASS_DIAGNOSTICS when
    the dataset has their columns) x FIXED_POINT] (the network is then run through WithProposals).

    A pixel is predicted as object where the logit is > 0 (sigmoid > 0.5).
    """
    was_training = net.training
    net.set_train(False)
    rows = {resolution: [] for resolution in resolutions}
    if diagnostics:
        inspected = inspection_of(net)
        rows["diagnostics"] = []
    same_class_at = 6 + (2 if "original" in resolutions else 0)
    iterator = dataset.create_tuple_iterator(num_epochs=1)
    # disable=None: a progress bar on a terminal, none in log files.
    with raising_decode_errors():
        for batch in tqdm(iterator, total=dataset.get_dataset_size(), desc=description, file=sys.stdout,
                          leave=False, disable=None):
            image, input_ids, attention_mask, mask, ref_id, sent_id = batch[:6]
            ids = [ref_id.asnumpy().reshape(-1), sent_id.asnumpy().reshape(-1)]
            if diagnostics:
                logits, weights, proposals, combined = (output.asnumpy() for output in
                                                        inspected(image, input_ids, attention_mask))
                target = low_resolution_target(mask.asnumpy(), *proposals.shape[2:])
                values = proposal_diagnostics(proposals, weights, combined, target)
                if len(batch) > same_class_at:
                    same_class, count = batch[same_class_at].asnumpy(), batch[same_class_at + 1].asnumpy()
                    values = np.concatenate([values, wrong_object_diagnostics(
                        logits[:, 0] > 0, mask.asnumpy()[:, 0] > 0.5, same_class, count.reshape(-1))], axis=1)
                values = np.rint(values * FIXED_POINT)
                rows["diagnostics"].append(np.concatenate([np.stack(ids, axis=1), values.astype(np.int64)], axis=1))
            else:
                logits = net(image, input_ids, attention_mask).asnumpy()
            if "input" in rows:
                counts = intersection_union(logits[:, 0] > 0, mask.asnumpy()[:, 0] > 0.5)
                rows["input"].append(np.stack(ids + list(counts), axis=1))
            if "original" in rows:
                counts = original_intersection_union(logits, batch[6].asnumpy(), batch[7].asnumpy())
                rows["original"].append(np.stack(ids + list(counts), axis=1))
    net.set_train(was_training)
    return {resolution: np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 4), np.int64)
            for resolution, parts in rows.items()}


def evaluate_split(net, dataset, description="eval", per_sample_file=None, split="", ranks=None,
                   resolutions=("input",), diagnostics=False):
    """Metrics of DESIGN section 5 of `net` on `dataset` (batches with ref_id and sent_id; with the original
    resolution also the original_mask columns): a flat dict for one resolution, {resolution: metrics} for
    several.

    With `ranks` (a RankGroup of several ranks), `dataset` is this rank's shard of the split; the
    per-sample counts of all shards are gathered on every rank and, like a single process's, put in
    sent_id order, so every rank returns the metrics a single process computes, to the last digit.
    `per_sample_file` (give it on one rank only) gets one JSON line per sample of the whole split, in
    sent_id order: "iou" with one resolution, "iou_input" and "iou_original" with both. With `diagnostics`
    the means of DIAGNOSTICS over the split join the (first resolution's) metrics.
    """
    results, sample_ious_of, means = {}, {}, {}
    for resolution, rows in predict_counts(net, dataset, description, resolutions, diagnostics).items():
        if ranks is not None:
            rows = ranks.gather_rows(rows)
        # One order however the split was sharded, so every rank's sums run in the same order.
        rows = rows[np.argsort(rows[:, 1], kind="stable")]
        if resolution == "diagnostics":
            names = DIAGNOSTICS + (SAME_CLASS_DIAGNOSTICS if rows.shape[1] > 2 + len(DIAGNOSTICS) else ())
            means = diagnostics_summary(names, rows[:, 2:] / FIXED_POINT) if len(rows) else {}
            continue
        metrics = RefSegMetrics()
        sample_ids = rows[:, :2]
        sample_ious_of[resolution] = metrics.add_counts(rows[:, 2], rows[:, 3])
        results[resolution] = metrics.result()
    if per_sample_file is not None:
        keys = ["iou"] if len(resolutions) == 1 else [f"iou_{resolution}" for resolution in resolutions]
        for index, (ref_id, sent_id) in enumerate(sample_ids.tolist()):
            record = {"split": split, "ref_id": ref_id, "sent_id": sent_id}
            for key, resolution in zip(keys, resolutions):
                record[key] = round(float(sample_ious_of[resolution][index]), 6)
            per_sample_file.write(json.dumps(record) + "\n")
    results[resolutions[0]].update(means)
    return results[resolutions[0]] if len(resolutions) == 1 else results


def metrics_summary(metrics):
    return ", ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in metrics.items())
