"""Evaluation: predictions of a network over a split, accumulated into the protocol's metrics
(overall IoU, mean IoU and precision at IoU thresholds)."""
import json
import sys

import numpy as np
from tqdm import tqdm

from .data.dataset import raising_decode_errors

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def intersection_union(pred, target):
    """Per-sample |P and G| and |P or G| of boolean masks (B, ...) -> two int64 arrays (B,)."""
    pred = np.asarray(pred, bool).reshape(len(pred), -1)
    target = np.asarray(target, bool).reshape(len(target), -1)
    return (pred & target).sum(axis=1).astype(np.int64), (pred | target).sum(axis=1).astype(np.int64)


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


def format_table(results):
    """Markdown table of {split: metrics} in percent."""
    columns = ["oIoU", "mIoU"] + [f"prec@{t}" for t in THRESHOLDS]
    lines = ["| split | " + " | ".join(columns) + " | samples |",
             "|---" * (len(columns) + 2) + "|"]
    for split, metrics in results.items():
        cells = " | ".join(f"{100 * metrics[c]:.2f}" for c in columns)
        lines.append(f"| {split} | {cells} | {metrics['num_samples']} |")
    return "\n".join(lines)

def predict_counts(net, dataset, description="eval"):
    """Runs `net` over every batch of `dataset` (image, input_ids, attention_mask, mask, ref_id, sent_id)
    -> int64 (n, 4) rows [ref_id, sent_id, intersection, union], in the dataset's order.

    A pixel is predicted as object where the logit is > 0 (sigmoid > 0.5).
    """
    was_training = net.training
    net.set_train(False)
    rows = []
    iterator = dataset.create_tuple_iterator(num_epochs=1)
    # disable=None: a progress bar on a terminal, none in log files.
    with raising_decode_errors():
        for batch in tqdm(iterator, total=dataset.get_dataset_size(), desc=description, file=sys.stdout,
                          leave=False, disable=None):
            image, input_ids, attention_mask, mask, ref_id, sent_id = batch[:6]
            logits = net(image, input_ids, attention_mask).asnumpy()
            inter, union = intersection_union(logits[:, 0] > 0, mask.asnumpy()[:, 0] > 0.5)
            rows.append(np.stack([ref_id.asnumpy().reshape(-1), sent_id.asnumpy().reshape(-1), inter, union],
                                 axis=1))
    net.set_train(was_training)
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 4), np.int64)


def evaluate_split(net, dataset, description="eval", per_sample_file=None, split="", ranks=None):
    """Metrics of DESIGN section 5 of `net` on `dataset` (batches with ref_id and sent_id).

    With `ranks` (a RankGroup of several ranks), `dataset` is this rank's shard of the split; the
    per-sample counts of all shards are gathered on every rank and, like a single process's, put in
    sent_id order, so every rank returns the metrics a single process computes, to the last digit.
    `per_sample_file` (give it on one rank only) gets one JSON line per sample of the whole split, in
    sent_id order.
    """
    rows = predict_counts(net, dataset, description)
    if ranks is not None:
        rows = ranks.gather_rows(rows)
    # One order however the split was sharded, so every rank's sums run in the same order.
    rows = rows[np.argsort(rows[:, 1], kind="stable")]
    metrics = RefSegMetrics()
    ious = metrics.add_counts(rows[:, 2], rows[:, 3])
    if per_sample_file is not None:
        for (ref_id, sent_id, _, _), iou in zip(rows.tolist(), ious):
            per_sample_file.write(json.dumps({"split": split, "ref_id": ref_id, "sent_id": sent_id,
                                              "iou": round(float(iou), 6)}) + "\n")
    return metrics.result()


def metrics_summary(metrics):
    return ", ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in metrics.items())
