"""eval.py: metrics of a checkpoint on one or several splits, a table and a JSON file."""
import contextlib

from ..checkpoint import load_network_weights
from ..context import setup_context
from ..data.dataset import check_token_ids, create_dataset
from ..evaluation import evaluate_split, flat_results, format_table, resolutions_of
from ..files import atomic_path, check_output_file, write_json_atomic
from ..models.coupalign import CoupAlign
from ..parallel import RankGroup

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


@contextlib.contextmanager
def per_sample_writer(path):
    """The per-sample JSON-lines file (written atomically: it appears complete or not at all), or None."""
    if not path:
        yield None
        return
    with atomic_path(path, suffix=".jsonl") as temp, open(temp, "w", encoding="utf-8") as handle:
        yield handle


def resolution_note(config, resolutions):
    """The line under the table that says at which resolution the numbers were counted."""
    meaning = {"input": f"at the {config.image_size}x{config.image_size} network input",
               "original": "at each image's own size"}
    return "resolution: " + "; ".join(f"{resolution} = {meaning[resolution]}" for resolution in resolutions)


def run_eval(config):
    """Evaluates `ckpt_path` on every split; under msrun each rank evaluates its shard and rank 0 writes."""
    for flag in ("result_json", "per_sample_json"):
        if config[flag]:
            check_output_file(config[flag], flag)
    resolutions = resolutions_of(config.eval_resolution)
    ranks = RankGroup(*setup_context(config, allow_parallel=True))
    splits = parse_splits(config)
    for split in splits:
        check_token_ids(config, split)
    datasets = {split: create_dataset(config, split, training=False, rank_id=ranks.rank_id,
                                      group_size=ranks.group_size, with_ids=True,
                                      original_masks="original" in resolutions,
                                      same_class_masks=config.eval_diagnostics) for split in splits}
    net = CoupAlign.from_config(config)
    load_network_weights(net, config.ckpt_path)
    net.set_train(False)
    if ranks.distributed:
        print(f"rank {ranks.rank_id} of {ranks.group_size}: evaluating its shard of {', '.join(splits)}", flush=True)
    results = {}
    with per_sample_writer(config.per_sample_json if ranks.is_main else "") as per_sample:
        for split in splits:
            results[split] = evaluate_split(net, datasets[split], description=split, per_sample_file=per_sample,
                                            split=split, ranks=ranks, resolutions=resolutions,
                                            diagnostics=config.eval_diagnostics)
            if ranks.is_main:
                for label, metrics in flat_results({split: results[split]}):
                    print(f"{label}: oIoU {metrics['oIoU']:.4f} mIoU {metrics['mIoU']:.4f} "
                          f"({metrics['num_samples']} samples)", flush=True)
    if not ranks.is_main:
        return results
    print(format_table(results, resolution_note(config, resolutions)))
    if config.result_json:
        write_json_atomic(config.result_json, results)
        print(f"results written to {config.result_json}")
    return results
