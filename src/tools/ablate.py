"""Ablations: train the same model with one module or recipe part removed at a time, same seed, data and
budget, and print one table of the validation metrics.

python -m src.tools.ablate --mindrecord_dir M --vocab_file V --work_dir W [--config_path tiny_config.yaml]
    [--variants full,no_lang_to_vision,...] [--json W/ablation.json] [any train.py flag, e.g. --epochs 8]

Each variant trains with train.py in its own process into W/<variant>, its output in W/<variant>.log and its
end-of-epoch lines echoed; a variant whose folder already holds a finished run (its train_log.jsonl has the
last epoch's record) is read, not trained again.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from model_utils.config import ConfigError, get_config
from src.files import check_output_folder, write_json_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# name -> (what it removes or changes, the train.py overrides that do it: a string, or a function of the config)
VARIANTS = {
    "full": ("the model and recipe of the config", {}),
    "no_lang_to_vision": ("no language-to-vision WPA (pixels and decoder maps without the words)",
                          {"wpa_lang_to_vision": "false"}),
    "no_vision_to_lang": ("no vision-to-language WPA (words without the pixels)", {"wpa_vision_to_lang": "false"}),
    "one_proposal": ("N = 1: a single proposal, SMA has nothing to choose", {"num_queries": "1"}),
    "no_aux_loss": ("no auxiliary contrastive loss", {"loss_aux": "0"}),
    "no_position": ("no position encoding in WPA (either direction)", {"wpa_position_dim": "0"}),
    "no_proposal_supervision": ("neither proposal nor selection loss (the paper's losses only)",
                                {"loss_proposal": "0", "loss_selection": "0"}),
    "no_selection_loss": ("proposal supervision without the SMA selection loss", {"loss_selection": "0"}),
    "no_sma_geometry": ("SMA without the proposals' geometry (the paper's SMA: queries and sentence only)",
                        {"sma_geometry": "false"}),
    "no_deep_supervision": ("mask losses on the last decoder layer only", {"loss_deep_supervision": "0"}),
    "lr_mult_10": ("new_param_lr_mult 10: fusion and decoder at the config's lr, encoders at a tenth of it",
                   {"new_param_lr_mult": "10", "lr": lambda config: repr(config.lr / 10)}),
    "no_warmup": ("no learning-rate warm-up", {"warmup_epochs": "0"}),
}
REPORTED = ("oIoU", "mIoU", "prec@0.5", "best_proposal_iou", "proposal_pairwise_iou", "sma_weight_entropy",
            "wrong_object_share")


def parse_flags(argv):
    parser = argparse.ArgumentParser(prog="python -m src.tools.ablate", add_help=True)
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", default="")
    parser.add_argument("--config_path", default=os.path.join(ROOT, "tiny_config.yaml"))
    options, train_flags = parser.parse_known_args(argv)
    names = [name.strip() for name in options.variants.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    return options, names, train_flags


def read_run(folder, epochs):
    """(the val metrics of the last epoch, of the best epoch) of a finished run in folder, or None."""
    path = os.path.join(folder, "train_log.jsonl")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    validated = [record for record in records if "val" in record and "mean_loss" in record]
    if not validated or validated[-1]["epoch"] != epochs:
        return None
    return validated[-1]["val"], max((record["val"] for record in validated), key=lambda val: val["oIoU"])


def variant_flags(name, config):
    """The train.py flags that make `name` out of `config`."""
    return [flag for key, value in VARIANTS[name][1].items()
            for flag in (f"--{key}", value(config) if callable(value) else value)]


def run_logged(command, log_path, name):
    """Runs `command`, its output into log_path, echoing its end-of-epoch lines -> (exit code, last line)."""
    last_line = ""
    with open(log_path, "w", encoding="utf-8") as log, \
            subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as child:
        for line in child.stdout:
            log.write(line)
            if line.strip():
                last_line = line.strip().removeprefix("error: ")
            if " done:" in line:  # "epoch 2/6 done: mean loss ... in 42.5s; val oIoU 0.6505, mIoU ..."
                summary, _, metrics = line.partition("; val ")
                print(f"ablate: {name}: {summary.strip()}; val {metrics.split(',')[0]}", flush=True)
    return child.returncode, last_line


def train_variant(name, options, train_flags, config):
    """Trains one variant (unless its folder holds a finished run) -> {last, best, seconds}."""
    folder = os.path.join(options.work_dir, name)
    log_path = os.path.join(options.work_dir, f"{name}.log")
    epochs = int(config.epochs)
    finished = read_run(folder, epochs)
    seconds = None
    if finished is None:
        flags = variant_flags(name, config)
        command = [sys.executable, "train.py", "--config_path", options.config_path, *train_flags, *flags,
                   "--output_dir", folder, "--overwrite", "true"]
        print(f"ablate: training {name} ({VARIANTS[name][0]}); output in {log_path}", flush=True)
        start = time.perf_counter()
        returncode, last_line = run_logged(command, log_path, name)
        seconds = time.perf_counter() - start
        if returncode != 0:
            raise RuntimeError(f"variant {name} failed: {last_line or f'exit code {returncode}'} (log: {log_path})")
        finished = read_run(folder, epochs)
        if finished is None:
            raise RuntimeError(f"variant {name}: {folder}/train_log.jsonl has no validation of epoch {epochs}")
    return {"last": finished[0], "best": finished[1], "seconds": seconds}


def table(results):
    """Markdown table of the last epoch's val metrics per variant, with the oIoU change against full."""
    header = "| variant | change | " + " | ".join(REPORTED) + " | oIoU vs full |"
    lines = [header, "|---" * (len(REPORTED) + 3) + "|"]
    full = results.get("full", {}).get("last", {}).get("oIoU")
    for name, result in results.items():
        last = result["last"]
        cells = " | ".join(f"{100 * last[key]:.1f}" if key in last else "-" for key in REPORTED)
        delta = f"{100 * (last['oIoU'] - full):+.1f}" if full is not None and name != "full" else ""
        lines.append(f"| {name} | {VARIANTS[name][0]} | {cells} | {delta} |")
    return "\n".join(lines)


def main(argv=None):
    try:
        options, names, train_flags = parse_flags(sys.argv[1:] if argv is None else argv)
        config = get_config(train_flags + ["--config_path", options.config_path])
        epochs = int(config.epochs)
        check_output_folder(options.work_dir, "work_dir")
        os.makedirs(options.work_dir, exist_ok=True)
        results = {name: train_variant(name, options, train_flags, config) for name in names}
    except (ConfigError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"val metrics (%) after epoch {epochs}, same seed and data for every variant:")
    print(table(results))
    if options.json:
        write_json_atomic(options.json, results, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
