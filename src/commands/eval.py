"""eval.py: metrics of a checkpoint on one or several splits, a table and a JSON file."""
import json

from ..checkpoint import load_network_weights
from ..context import setup_context
from ..data.dataset import check_token_ids, create_dataset
from ..evaluation import evaluate_split, format_table
from ..files import atomic_path
from ..models.coupalign import CoupAlign

ALL_SPLITS = {"refcoco": ("val", "testA", "testB"), "refcoco+": ("val", "testA", "testB"),
              "refcocog": ("val", "test")}


def parse_splits(config):
    """`--eval_splits val,testA` or `all` -> list of split names."""
    text = config.eval_splits if isinstance(config.eval_splits, str) else ",".join(config.eval_splits)
    if text.strip() == "all":
        if config.dataset == "refcocog" and config.split_by == "google":
            return ["val"]
        return list(ALL_SPLITS.get(config.dataset, ("val", "testA", "testB")))
    splits = [split.strip() for split in text.split(",") if split.strip()]
    if not splits:
        raise ValueError("--eval_splits names no split")
    return splits


def write_json_atomic(path, data):
    with atomic_path(path) as temp, open(temp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)


def run_eval(config):
    setup_context(config)
    splits = parse_splits(config)
    for split in splits:
        check_token_ids(config, split)
    datasets = {split: create_dataset(config, split, training=False, with_ids=True) for split in splits}
    net = CoupAlign.from_config(config)
    load_network_weights(net, config.ckpt_path)
    net.set_train(False)
    results = {}
    per_sample = open(config.per_sample_json, "w", encoding="utf-8") if config.per_sample_json else None
    try:
        for split in splits:
            results[split] = evaluate_split(net, datasets[split], description=split, per_sample_file=per_sample,
                                            split=split)
            print(f"{split}: oIoU {results[split]['oIoU']:.4f} mIoU {results[split]['mIoU']:.4f} "
                  f"({results[split]['num_samples']} samples)", flush=True)
    finally:
        if per_sample is not None:
            per_sample.close()
    print(format_table(results))
    if config.result_json:
        write_json_atomic(config.result_json, results)
        print(f"results written to {config.result_json}")
    return results

