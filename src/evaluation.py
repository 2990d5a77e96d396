"""Evaluation: predictions of a network over a split, accumulated into the protocol's metrics
(overall IoU, mean IoU and precision at IoU thresholds)."""
import json
import sys

import numpy as np
from tqdm import tqdm

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def intersection_union(pred, target):
    """Per-sample |P and G| and |P or G| of boolean masks (B, ...) -> two int64 arrays (B,)."""
    pred = np.asarray(pred, bool).reshape(len(pred), -1)
    target = np.asarray(target, bool).reshape(len(target), -1)
    return (pred & target).sum(axis=1).astype(np.int64), (pred | target).sum(axis=1).astype(np.int64)


class RefSegMetrics:
    """Accumulates intersections and unions over a split."""

    def __init__(self):
        self.intersections = []
        self.unions = []

    def update(self, pred, target):
        """Adds a batch of boolean masks; returns the per-sample IoUs (0 where the union is empty)."""
        inter, union = intersection_union(pred, target)
        self.intersections.append(inter)
        self.unions.append(union)
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0)

    def result(self):
        """{'oIoU', 'mIoU', 'prec@0.5'..'prec@0.9', 'num_samples'} with fractions in [0, 1]."""
        inter = np.concatenate(self.intersections) if self.intersections else np.zeros(0, np.int64)
        union = np.concatenate(self.unions) if self.unions else np.zeros(0, np.int64)
        ious = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        total_union = union.sum()
        result = {"oIoU": float(inter.sum() / total_union) if total_union > 0 else 0.0,
                  "mIoU": float(ious.mean()) if len(ious) else 0.0}
        for threshold in THRESHOLDS:
            result[f"prec@{threshold}"] = float((ious >= threshold).mean()) if len(ious) else 0.0
        result["num_samples"] = int(len(ious))
        return result


def format_table(results):
    """Markdown table of {split: metrics} in percent."""
    columns = ["oIoU", "mIoU"] + [f"prec@{t}" for t in THRESHOLDS]
    lines = ["| split | " + " | ".join(columns) + " | samples |",
             "|---" * (len(columns) + 2) + "|"]
    for split, metrics in results.items():
        cells = " | ".join(f"{100 * metrics[c]:.2f}" for c in columns)
        lines.append(f"| {split} | {cells} | {metrics['num_samples']} |")
    return "\n".join(lines)

def evaluate_split(net, dataset, description="eval", per_sample_file=None, split=""):
    """Runs `net` over every batch of `dataset`; returns the metrics dict of DESIGN section 5.

    Batches are (image, input_ids, attention_mask, mask[, ref_id, sent_id]); a pixel is predicted
    as object where the logit is > 0 (sigmoid > 0.5).
    """
    was_training = net.training
    net.set_train(False)
    metrics = RefSegMetrics()
    total = dataset.get_dataset_size()
    iterator = dataset.create_tuple_iterator(num_epochs=1)
    # disable=None: a progress bar on a terminal, none in log files.
    for batch in tqdm(iterator, total=total, desc=description, file=sys.stdout, leave=False, disable=None):
        image, input_ids, attention_mask, mask = batch[:4]
        logits = net(image, input_ids, attention_mask).asnumpy()
        ious = metrics.update(logits[:, 0] > 0, mask.asnumpy()[:, 0] > 0.5)
        if per_sample_file is not None and len(batch) >= 6:
            ref_ids, sent_ids = batch[4].asnumpy().reshape(-1), batch[5].asnumpy().reshape(-1)
            for ref_id, sent_id, iou in zip(ref_ids, sent_ids, ious):
                per_sample_file.write(json.dumps({"split": split, "ref_id": int(ref_id), "sent_id": int(sent_id),
                                                  "iou": round(float(iou), 6)}) + "\n")
    net.set_train(was_training)
    return metrics.result()


def metrics_summary(metrics):
    return ", ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in metrics.items())
