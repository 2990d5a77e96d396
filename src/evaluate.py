"""Evaluation loop: predictions of a network over a split, accumulated into the protocol's metrics."""
import json
import sys

from tqdm import tqdm

from .metrics import RefSegMetrics


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

