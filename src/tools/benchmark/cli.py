"""Command line: arguments, one child process per part (re-running this module), the report out."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

from . import __doc__ as PACKAGE_DOC
from .machine import load_average, machine_info, peak_rss_mb, torch_skip_reason
from .measure import log
from .report import markdown_report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_CONFIG = os.path.join(ROOT, "default_config.yaml")
ALL_PARTS = ("encoders", "inference", "train", "stages", "data")
DEFAULT_PARTS = "encoders,inference,train"


def part_function(part):
    """The function that measures `part` (imported in the child only: the parent needs no MindSpore)."""
    from .encoders import part_encoders, part_stages
    from .coupalign import part_inference, part_train
    from .data import part_data
    return {"encoders": part_encoders, "inference": part_inference, "train": part_train,
            "stages": part_stages, "data": part_data}[part]


def run_child(args, config_argv):
    """Runs one part in this (child) process and writes its result as JSON to args.child_result.

    A part that raises leaves {"error": ...} with the exception's first line, and the exit code 1."""
    from model_utils.config import get_config
    config = get_config(config_argv, args.config_path)
    if args.recursion_limit:
        import mindspore as ms
        ms.set_recursion_limit(args.recursion_limit)
    failed = False
    try:
        result = part_function(args.child)(config, args)
    except Exception as err:  # any failure of the measured code is reported, not hidden
        traceback.print_exc()
        message = str(err).strip().splitlines()
        result = {"error": f"{type(err).__name__}: {message[0] if message else ''}", "peak_rss_mb": peak_rss_mb()}
        failed = True
    if args.recursion_limit:
        result["recursion_limit"] = args.recursion_limit
    with open(args.child_result, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------
# Parent side: one child per part, table, JSON
# ----------------------------------------------------------------------------------------------

def child_command(part, args, config_argv, result_path):
    command = [sys.executable, "-m", "src.tools.benchmark", "--child", part, "--child_result", result_path,
               "--config_path", args.config_path, "--runs", str(args.runs), "--warmup", str(args.warmup),
               "--train_batch", str(args.train_batch), "--ms_threads", str(args.ms_threads),
               "--lead_in", str(args.lead_in),
               "--torch_threads", ",".join(str(threads) for threads in args.torch_threads),
               "--data_images", str(args.data_images), "--data_batches", str(args.data_batches),
               "--data_batch_size", str(args.data_batch_size), "--data_image_size", args.data_image_size]
    if args.data_dir:
        command += ["--data_dir", os.path.abspath(args.data_dir)]
    if args.no_torch:
        command.append("--no_torch")
    if args.recursion_limit:
        command += ["--recursion_limit", str(args.recursion_limit)]
    return command + list(config_argv)


def run_part(part, args, config_argv):
    """Runs `part` in a fresh process (its own cwd for MindSpore's kernel caches); returns its result."""
    with tempfile.TemporaryDirectory(prefix=f"bench_{part}_") as workdir:
        result_path = os.path.join(workdir, "result.json")
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        log(f"part '{part}': starting a child process")
        start = time.perf_counter()
        completed = subprocess.run(child_command(part, args, config_argv, result_path), cwd=workdir, env=env,
                                   stdout=sys.stderr, check=False)
        wall = time.perf_counter() - start
        if not os.path.isfile(result_path):
            log(f"part '{part}': FAILED (exit code {completed.returncode})")
            return {"error": f"child process exited with code {completed.returncode}", "process_wall_s": wall}
        with open(result_path, "r", encoding="utf-8") as handle:
            result = json.load(handle)
        if "error" in result:
            log(f"part '{part}': FAILED: {result['error']}")
            result["process_wall_s"] = wall
            return result
    result["process_wall_s"] = wall
    log(f"part '{part}': done in {wall:.0f} s, peak RSS {result.get('peak_rss_mb', 0):.0f} MB")
    return result


def thread_list(text):
    values = [int(item) for item in text.split(",") if item.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}")
    return list(dict.fromkeys(values))


def default_torch_threads(cores):
    """All cores (the main comparison) and, on a multi-core machine, one thread: on a CPU shared with other
    work, PyTorch's OpenMP threads wait for each other and one thread can be several times faster."""
    return f"{cores},1" if cores > 1 else "1"


def parse_args(argv):
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(prog="python -m src.tools.benchmark", description=PACKAGE_DOC.splitlines()[0],
                                     epilog="Any other --<key> <value> overrides a config key.")
    parser.add_argument("--config_path", default=DEFAULT_CONFIG)
    parser.add_argument("--runs", type=int, default=10, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls after the first one")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--no_torch", action="store_true", help="measure our network only")
    parser.add_argument("--parts", default=DEFAULT_PARTS, help=f"comma list of {', '.join(ALL_PARTS)}")
    parser.add_argument("--train_batch", type=int, default=2)
    parser.add_argument("--lead_in", type=int, default=1,
                        help="untimed calls of the same function right before every timed call")
    parser.add_argument("--ms_threads", type=int, default=cores, help="MindSpore CPU op threads")
    parser.add_argument("--torch_threads", type=thread_list, default=thread_list(default_torch_threads(cores)),
                        help="PyTorch intra-op thread counts to time, comma list; the first is the main one")
    parser.add_argument("--recursion_limit", type=int, default=0,
                        help="mindspore.set_recursion_limit before compiling (0: MindSpore's default, 1000)")
    parser.add_argument("--data_dir", default="",
                        help="data part: keep (and reuse) the synthetic set and its MindRecord here "
                             "(default: a temporary folder)")
    parser.add_argument("--data_images", type=int, default=200, help="data part: synthetic images")
    parser.add_argument("--data_image_size", default="640x480", help="data part: synthetic image WIDTHxHEIGHT")
    parser.add_argument("--data_batches", type=int, default=20,
                        help="data part: batches timed per pipeline, after 2 warm-up batches")
    parser.add_argument("--data_batch_size", type=int, default=8, help="data part: pipeline batch size")
    parser.add_argument("--child", choices=ALL_PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--child_result", help=argparse.SUPPRESS)
    args, config_argv = parser.parse_known_args(argv)
    args.config_path = os.path.abspath(args.config_path)
    if args.runs < 1 or args.warmup < 0 or args.train_batch < 1 or args.ms_threads < 1:
        parser.error("--runs, --train_batch and --ms_threads must be at least 1, --warmup at least 0")
    if args.data_images < 4 or args.data_batches < 1 or args.data_batch_size < 1:
        parser.error("--data_images must be at least 4 (one per split), --data_batches and --data_batch_size "
                     "at least 1")
    args.part_list = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = [part for part in args.part_list if part not in ALL_PARTS]
    if unknown or not args.part_list:
        parser.error(f"--parts takes a comma list of {', '.join(ALL_PARTS)}; got {args.parts!r}")
    return args, config_argv


def main(argv=None):
    args, config_argv = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        return run_child(args, config_argv)
    from model_utils.config import ConfigError, get_config
    try:
        config = get_config(config_argv, args.config_path)
    except ConfigError as err:
        sys.exit(f"error: {err}")
    reason = torch_skip_reason(args)
    log("PyTorch side: " + (f"skipped ({reason}); measuring MindSpore only" if reason else "enabled"))
    report = {"config_path": args.config_path, "image_size": config.image_size, "max_tokens": config.max_tokens,
              "runs": args.runs, "warmup": args.warmup, "lead_in": args.lead_in, "train_batch": args.train_batch,
              "ms_threads": args.ms_threads, "recursion_limit": args.recursion_limit or None,
              "torch_threads": args.torch_threads if reason is None else [],
              "torch_enabled": reason is None, "torch_skipped_reason": reason, "machine": machine_info(),
              "parts": {}}
    for part in args.part_list:
        report["parts"][part] = run_part(part, args, config_argv)
    report["load_average_at_end"] = load_average()
    print(markdown_report(report), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
        log(f"wrote {args.json}")
    failed = [part for part, result in report["parts"].items() if "error" in result]
    return 1 if failed else 0

