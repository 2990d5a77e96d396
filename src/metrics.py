"""Referring-segmentation metrics: overall IoU, mean IoU and precision at IoU thresholds."""
import numpy as np

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
