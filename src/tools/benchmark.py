"""CPU speed and memory of the MindSpore CoupAlign, with the encoders side by side with PyTorch.

    python -m src.tools.benchmark [--config_path default_config.yaml] [--runs 10] [--warmup 2]
        [--json out.json] [--no_torch] [--parts encoders,inference,train] [--train_batch 2]
        [--ms_threads N] [--torch_threads N,1] [--<config key> <value> ...]

Parts, each measured in its own child process (so that its peak resident memory is its own):
  encoders   our Swin and BERT (GRAPH_MODE) and the same architectures in PyTorch transformers
             (SwinModel, BertModel; eval, torch.inference_mode) with the same weights, batch 1,
             timed interleaved (MindSpore call, PyTorch call, MindSpore call, ...); a parity check
             of the outputs comes first.
  inference  the whole CoupAlign forward pass at batch 1 (MindSpore only).
  train      one training step (forward, backward, clipping, AdamWeightDecay) at --train_batch.
  stages     (not run by default) the blocks of each Swin stage, MindSpore against PyTorch, to see
             where the time goes.

Threads: MindSpore uses --ms_threads CPU kernel threads (default: all cores). PyTorch is timed at
each count of --torch_threads (default: all cores, then 1): on a CPU shared with other work, OpenMP
threads wait for each other and one PyTorch thread is often several times faster than all cores.

Timings are medians (with quartiles and min/max) of --runs calls after --warmup calls. Each timed call
comes right after --lead_in (default 1) untimed calls of the same function, as in a loop over data:
interleaving alone measures each framework in the wake of the other (PyTorch's OpenMP threads keep
spinning after a call and slowed the next MindSpore BERT call 2-3x), and a pause instead measures a
cold start (MindSpore's BERT, 280 small kernels, takes 50 ms back to back and 100 ms after 0.5 s idle). "first call"
is the wall time of the very first call (graph compilation included); "compile" is that first call
minus the median steady-state call. Peak RSS is ru_maxrss of the child process that ran the part.
A Markdown table goes to stdout, progress to stderr. PyTorch is optional: without torch and
transformers (or with --no_torch) only our network is measured.
"""
import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata

import numpy as np

import mindspore as ms
import mindspore.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_CONFIG = os.path.join(ROOT, "default_config.yaml")
ALL_PARTS = ("encoders", "inference", "train", "stages")
DEFAULT_PARTS = "encoders,inference,train"
PARITY_TOLERANCE = 1e-3
PACKAGES = ("mindspore", "torch", "transformers", "numpy")


def log(message):
    """Progress line on stderr."""
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Statistics, machine description, memory
# ----------------------------------------------------------------------------------------------

def summarise_times(seconds):
    """Per-call times in seconds -> median, quartiles, min, max and mean in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "runs": int(ms.size),
        "median_ms": float(np.median(ms)),
        "q1_ms": float(np.percentile(ms, 25)),
        "q3_ms": float(np.percentile(ms, 75)),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
        "times_ms": [round(float(value), 3) for value in ms],
    }


def timing_record(first_call_s, steady_s):
    """Statistics of the steady calls plus the first call and the compile estimate derived from it."""
    record = summarise_times(steady_s)
    record["first_call_s"] = float(first_call_s)
    record["compile_s"] = max(0.0, float(first_call_s) - record["median_ms"] / 1000.0)
    return record


def peak_rss_mb():
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def resident_mb():
    """Current resident set size of this process (VmRSS), or None where /proc is missing."""
    try:
        with open("/proc/self/status", "r", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def cpu_model():
    try:
        with open("/proc/cpuinfo", "r", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info():
    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: package_version(name) for name in PACKAGES},
    }
    info["load_average_at_start"] = load_average()
    return info


def torch_unavailable_reason():
    """None when torch and transformers import; else why the PyTorch side is left out."""
    for name in ("torch", "transformers"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed"
    return None


# ----------------------------------------------------------------------------------------------
# Child side: MindSpore set-up, inputs, random weights
# ----------------------------------------------------------------------------------------------

def setup_mindspore(threads):
    """GRAPH_MODE on CPU with `threads` kernel threads; returns the settings used."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(1)
    settings = {"mode": "GRAPH_MODE", "device": "CPU"}
    try:
        ms.device_context.cpu.op_tuning.threads_num(threads)
        settings["op_threads_num"] = threads
        settings["op_threads_api"] = "mindspore.device_context.cpu.op_tuning.threads_num"
    except (AttributeError, RuntimeError) as err:
        settings["op_threads_num"] = None
        settings["op_threads_error"] = str(err)
    try:
        settings["runtime_num_threads"] = ms.get_context("runtime_num_threads")
    except (ValueError, KeyError):
        pass
    return settings


def setup_torch(threads):
    """torch with `threads` intra-op threads; returns the settings used."""
    import torch
    torch.set_num_threads(threads)
    return {"intra_op_threads": torch.get_num_threads(), "inter_op_threads": torch.get_num_interop_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available())}


def make_inputs(config, batch, seed=0):
    """Random image (B,3,S,S), ids and mask (B,T) int32 (last quarter of the tokens padded), gt (B,1,S,S)."""
    rng = np.random.default_rng(seed)
    size, tokens = config.image_size, config.max_tokens
    image = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    input_ids = rng.integers(5, config.vocab_size, (batch, tokens)).astype(np.int32)
    attention_mask = np.ones((batch, tokens), np.int32)
    attention_mask[:, tokens - tokens // 4:] = 0
    input_ids[attention_mask == 0] = 0
    input_ids[:, 0] = min(101, config.vocab_size - 1)
    gt_mask = np.zeros((batch, 1, size, size), np.float32)
    gt_mask[:, :, size // 4:size // 2, size // 3:size * 2 // 3] = 1.0
    return {"image": image, "input_ids": input_ids, "attention_mask": attention_mask, "gt_mask": gt_mask}


def randomise_parameters(net, seed):
    """Random values for every parameter (norms and position tables included), scaled to keep a deep
    network's activations moderate, so that a parity check can fail."""
    rng = np.random.default_rng(seed)
    for name, param in net.parameters_and_names():
        shape = tuple(param.shape)
        noise = rng.standard_normal(shape, dtype=np.float32)
        if name.endswith("relative_position_bias_table"):
            value = noise
        elif len(shape) == 1:
            value = noise * 0.1 + (1.0 if name.endswith("gamma") else 0.0)
        else:
            value = noise * (0.5 / math.sqrt(int(np.prod(shape[1:]))))
        param.set_data(ms.Tensor(value.astype(np.float32)))


def wait_for(outputs):
    """Returns once `outputs` are computed: reads the last tensor of a (nested) tuple back to the host.

    A GRAPH_MODE call on CPU already returns after the graph ran (checked: a 2048^3 matmul chain returns
    after its compute time, reading back adds 0.1 ms); this keeps the timing honest should the runtime
    launch asynchronously. mindspore.runtime.synchronize() does not support the CPU device in 2.10.
    """
    last = outputs
    while isinstance(last, (tuple, list)):
        last = last[-1]
    last.asnumpy()
    return outputs


def timed_call(function):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def run_mindspore(cell, *inputs):
    return wait_for(cell(*inputs))


def first_call(label, function):
    seconds, result = timed_call(function)
    log(f"{label}: first call {seconds:.2f} s")
    return seconds, result


def warm_up(functions, warmup):
    for _ in range(warmup):
        for function in functions:
            function()


def interleaved_runs(functions, runs, label, lead_in=0):
    """Calls the functions in turn, `runs` rounds, each timed call right after `lead_in` untimed calls
    of the same function; returns one list of seconds per function."""
    times = [[] for _ in functions]
    for round_index in range(runs):
        for index, function in enumerate(functions):
            for _ in range(lead_in):
                function()
            times[index].append(timed_call(function)[0])
        log(f"{label}: run {round_index + 1}/{runs}: " + ", ".join(f"{t[-1] * 1000:.0f} ms" for t in times))
    return times


# ----------------------------------------------------------------------------------------------
# Our weights -> Hugging Face transformers models
# ----------------------------------------------------------------------------------------------

# Where our Swin block parameters live in transformers' SwinModel, for the 5.x and the 4.x naming.
HF_SWIN_NAMINGS = (
    {"qkv": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
     "attn.proj": "attention.o_proj",
     "table": "attention.relative_position_bias.relative_position_bias_table",
     "norm1": "layernorm_before", "norm2": "layernorm_after", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"},
    {"qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
     "attn.proj": "attention.output.dense",
     "table": "attention.self.relative_position_bias_table",
     "norm1": "layernorm_before", "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense",
     "mlp.fc2": "output.dense"},
)
BERT_LAYER_MODULES = {
    "attention_output": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
    "output_norm": "output.LayerNorm",
}
BERT_QKV = ("attention.self.query", "attention.self.key", "attention.self.value")
# HF parameters and buffers our encoders have no counterpart for (left at their initial values).
HF_ALLOWED_MISSING = ("layernorm.weight", "layernorm.bias", "relative_position_index", "position_ids",
                      "token_type_ids")


def torch_suffix(suffix):
    """MindSpore LayerNorm gamma/beta -> weight/bias."""
    return {"gamma": "weight", "beta": "bias"}.get(suffix, suffix)


def hf_swin_keys(name, naming):
    """HF SwinModel key(s) of one of our Swin parameter names (three for the fused qkv)."""
    module, suffix = name.rsplit(".", 1)
    suffix = torch_suffix(suffix)
    if module == "patch_embed.proj":
        return [f"embeddings.patch_embeddings.projection.{suffix}"]
    if module == "patch_embed.norm":
        return [f"embeddings.norm.{suffix}"]
    parts = name.split(".")
    if parts[0] != "layers":
        raise KeyError(f"no transformers counterpart for Swin parameter {name}")
    if parts[2] == "downsample":
        return [f"encoder.{module}.{suffix}"]
    block = ".".join(parts[:4])
    inner = ".".join(parts[4:-1])
    if parts[-1] == "relative_position_bias_table":
        return [f"encoder.{block}.{naming['table']}"]
    if inner == "attn.qkv":
        return [f"encoder.{block}.{part}.{suffix}" for part in naming["qkv"]]
    return [f"encoder.{block}.{naming[inner]}.{suffix}"]


def hf_bert_keys(name):
    """HF BertModel key(s) of one of our BERT parameter names (three for the fused qkv)."""
    module, suffix = name.rsplit(".", 1)
    suffix = "weight" if suffix == "embedding_table" else torch_suffix(suffix)
    if module.startswith("embeddings."):
        return [f"{module}.{suffix}"]
    parts = module.split(".")
    layer, inner = parts[1], ".".join(parts[2:])
    if inner == "attention.qkv":
        return [f"encoder.layer.{layer}.{part}.{suffix}" for part in BERT_QKV]
    return [f"encoder.layer.{layer}.{BERT_LAYER_MODULES[inner]}.{suffix}"]


def torch_state_from_ours(net, key_function):
    """{HF key: torch tensor} from our Cell's parameters; a fused qkv is split in three along axis 0."""
    import torch
    state = {}
    for name, param in net.parameters_and_names():
        array = param.asnumpy().copy()
        keys = key_function(name)
        pieces = np.split(array, len(keys), axis=0) if len(keys) > 1 else [array]
        for key, piece in zip(keys, pieces):
            state[key] = torch.from_numpy(np.ascontiguousarray(piece))
    return state


def choose_swin_naming(model):
    names = set(model.state_dict())
    for naming in HF_SWIN_NAMINGS:
        if f"encoder.layers.0.blocks.0.{naming['qkv'][0]}.weight" in names:
            return naming
    raise RuntimeError("this transformers version names SwinModel parameters in a way this benchmark "
                       "does not know")


def fit_relative_position_tables(model, state):
    """Blocks whose stage is not larger than the window use a shrunk window (as the official Swin and
    our network do); transformers 5.x sizes their tables for the configured window and then fails in
    the forward pass, so those bias modules are rebuilt at the size of our table."""
    params = dict(model.named_parameters())
    for key, tensor in state.items():
        if not key.endswith("relative_position_bias_table") or key not in params:
            continue
        if tuple(params[key].shape) == tuple(tensor.shape):
            continue
        owner_path = key.rsplit(".", 1)[0]
        owner = model.get_submodule(owner_path)
        if not hasattr(owner, "window_size"):
            raise RuntimeError(f"cannot resize {key}: {tuple(params[key].shape)} vs ours {tuple(tensor.shape)}")
        window = (math.isqrt(tensor.shape[0]) + 1) // 2
        parent_path, attribute = owner_path.rsplit(".", 1)
        setattr(model.get_submodule(parent_path), attribute, type(owner)(tensor.shape[1], (window, window)))


def load_into_torch(model, state):
    """Loads {HF key: tensor}; every HF parameter must be covered but the allowed leftovers."""
    result = model.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith(HF_ALLOWED_MISSING)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"weight transfer to transformers incomplete: missing {missing[:5]}, "
                           f"unexpected {list(result.unexpected_keys)[:5]}")


def build_torch_swin(config, our_swin):
    """transformers SwinModel of our Swin's architecture, carrying our Swin's weights, in eval mode."""
    import transformers
    hf_config = transformers.SwinConfig(
        image_size=config.image_size, patch_size=config.swin_patch_size, num_channels=3,
        embed_dim=config.swin_embed_dim, depths=list(config.swin_depths), num_heads=list(config.swin_num_heads),
        window_size=config.swin_window_size, mlp_ratio=config.swin_mlp_ratio, qkv_bias=True,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0, hidden_act="gelu",
        use_absolute_embeddings=False, layer_norm_eps=1e-5)
    model = transformers.SwinModel(hf_config, add_pooling_layer=False)
    naming = choose_swin_naming(model)
    state = torch_state_from_ours(our_swin, lambda name: hf_swin_keys(name, naming))
    fit_relative_position_tables(model, state)
    load_into_torch(model, state)
    return model.eval()


def build_torch_bert(config, our_bert):
    """transformers BertModel (no pooler) of our BERT's architecture and weights, in eval mode."""
    import transformers
    hf_config = transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.bert_hidden_size,
        num_hidden_layers=config.bert_num_layers, num_attention_heads=config.bert_num_heads,
        intermediate_size=config.bert_intermediate_size,
        max_position_embeddings=config.bert_max_position_embeddings,
        type_vocab_size=config.bert_type_vocab_size, layer_norm_eps=config.bert_layer_norm_eps,
        hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.BertModel(hf_config, add_pooling_layer=False)
    load_into_torch(model, torch_state_from_ours(our_bert, hf_bert_keys))
    return model.eval()


def torch_swin_maps(model, image):
    """The four stage maps before patch merging (B, C_i, H_i, W_i), as our Swin returns them."""
    output = model(image, output_hidden_states=True, output_hidden_states_before_downsampling=True)
    return output.reshaped_hidden_states[1:]


def torch_bert_words(model, input_ids, attention_mask):
    return model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def max_abs_diff(ours, theirs):
    return max(float(np.abs(mine.asnumpy() - ref.numpy()).max()) for mine, ref in zip(ours, theirs))


# ----------------------------------------------------------------------------------------------
# Parts (each runs in a child process)
# ----------------------------------------------------------------------------------------------

def build_our_encoders(config):
    """Our Swin and BERT with random weights, in inference mode."""
    from src.models.bert import BertModel
    from src.models.swin import SwinTransformer
    swin, bert = SwinTransformer.from_config(config), BertModel.from_config(config)
    randomise_parameters(swin, seed=1)
    randomise_parameters(bert, seed=2)
    swin.set_train(False)
    bert.set_train(False)
    return swin, bert


def torch_call(torch, threads, function):
    """`function` run under torch.inference_mode with `threads` intra-op threads."""
    def call():
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return function()
    return call


def part_encoders(config, args):
    """Swin and BERT, MindSpore against PyTorch transformers with the same weights, batch 1."""
    result = {"batch": 1, "threads": {"mindspore": setup_mindspore(args.ms_threads)}}
    inputs = make_inputs(config, batch=1)
    image, ids, mask = (ms.Tensor(inputs[key]) for key in ("image", "input_ids", "attention_mask"))
    log("encoders: building our Swin and BERT")
    swin, bert = build_our_encoders(config)
    swin_calls = [lambda: run_mindspore(swin, image)]
    bert_calls = [lambda: run_mindspore(bert, ids, mask)]
    seconds, our_maps = first_call("encoders: MindSpore Swin", swin_calls[0])
    swin_firsts = [seconds]
    seconds, our_words = first_call("encoders: MindSpore BERT", bert_calls[0])
    bert_firsts = [seconds]
    warm_up(swin_calls + bert_calls, args.warmup)
    result["mindspore_peak_rss_mb"] = peak_rss_mb()

    reason = "--no_torch given" if args.no_torch else torch_unavailable_reason()
    if reason is None:
        import torch
        result["threads"]["torch"] = setup_torch(args.torch_threads[0])
        log("encoders: building transformers SwinModel and BertModel with our weights")
        torch_swin, torch_bert = build_torch_swin(config, swin), build_torch_bert(config, bert)
        result["torch_attn_implementation"] = {"swin": torch_swin.config._attn_implementation,
                                               "bert": torch_bert.config._attn_implementation}
        t_image = torch.from_numpy(inputs["image"])
        t_ids = torch.from_numpy(inputs["input_ids"].astype(np.int64))
        t_mask = torch.from_numpy(inputs["attention_mask"].astype(np.int64))
        for threads in args.torch_threads:
            swin_calls.append(torch_call(torch, threads, lambda: torch_swin_maps(torch_swin, t_image)))
            bert_calls.append(torch_call(torch, threads, lambda: torch_bert_words(torch_bert, t_ids, t_mask)))
            seconds, their_maps = first_call(f"encoders: PyTorch Swin ({plural(threads, 'thread')})", swin_calls[-1])
            swin_firsts.append(seconds)
            seconds, their_words = first_call(f"encoders: PyTorch BERT ({plural(threads, 'thread')})", bert_calls[-1])
            bert_firsts.append(seconds)
            if "parity" not in result:
                result["parity"] = parity_record(our_maps, their_maps, our_words, their_words)
            warm_up([swin_calls[-1], bert_calls[-1]], args.warmup)
    del our_maps, our_words
    # One round: Swin in MindSpore, then in PyTorch (each thread count), then BERT likewise.
    times = interleaved_runs(swin_calls + bert_calls, args.runs, "encoders", args.lead_in)
    count = len(swin_calls)
    records = []
    for index in range(count):
        swin_times, bert_times = times[index], times[count + index]
        records.append({
            "swin": timing_record(swin_firsts[index], swin_times),
            "bert": timing_record(bert_firsts[index], bert_times),
            "total": timing_record(swin_firsts[index] + bert_firsts[index],
                                   [a + b for a, b in zip(swin_times, bert_times)]),
        })
    result["mindspore"] = dict(records[0], threads=args.ms_threads)
    result["torch"] = None
    if reason is None:
        result["torch"] = [dict(record, threads=threads, ratio_mindspore_over_torch=ratios(records[0], record))
                           for threads, record in zip(args.torch_threads, records[1:])]
    else:
        result["torch_skipped_reason"] = reason
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def ratios(ours, theirs, keys=("swin", "bert", "total")):
    """MindSpore median / PyTorch median per key."""
    return {key: ours[key]["median_ms"] / theirs[key]["median_ms"] for key in keys}


def parity_record(our_maps, their_maps, our_words, their_words):
    swin_diff = max_abs_diff(our_maps, their_maps)
    bert_diff = max_abs_diff([our_words], [their_words])
    ok = swin_diff < PARITY_TOLERANCE and bert_diff < PARITY_TOLERANCE
    log(f"encoders: parity with transformers (same weights): Swin max |diff| {swin_diff:.2e}, "
        f"BERT {bert_diff:.2e} -> {'OK' if ok else 'MISMATCH'} (tolerance {PARITY_TOLERANCE:g})")
    return {"swin_max_abs_diff": swin_diff, "bert_max_abs_diff": bert_diff, "tolerance": PARITY_TOLERANCE,
            "ok": ok}


def part_inference(config, args):
    """Whole CoupAlign forward pass (mask logits at full resolution), batch 1."""
    from src.models.coupalign import CoupAlign
    result = {"batch": 1, "threads": {"mindspore": setup_mindspore(args.ms_threads)}}
    inputs = make_inputs(config, batch=1)
    tensors = [ms.Tensor(inputs[key]) for key in ("image", "input_ids", "attention_mask")]
    log("inference: building CoupAlign")
    net = CoupAlign.from_config(config)
    net.set_train(False)
    forward = lambda: run_mindspore(net, *tensors)  # noqa: E731
    first_s, _ = first_call("inference", forward)
    warm_up([forward], args.warmup)
    times = interleaved_runs([forward], args.runs, "inference", args.lead_in)[0]
    result["mindspore"] = timing_record(first_s, times)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def part_train(config, args):
    """One training step: forward, losses, backward, clipping, AdamWeightDecay update."""
    from src.models.coupalign import CoupAlign
    from src.models.losses import CoupAlignWithLoss
    from src.engine.optimizer import build_optimizer
    from src.engine.train_step import TrainStep
    batch = args.train_batch
    result = {"batch": batch, "threads": {"mindspore": setup_mindspore(args.ms_threads)}}
    inputs = make_inputs(config, batch=batch)
    tensors = [ms.Tensor(inputs[key]) for key in ("image", "input_ids", "attention_mask", "gt_mask")]
    log(f"train: building CoupAlign + losses + AdamWeightDecay, batch {batch}")
    loss_net = CoupAlignWithLoss(CoupAlign.from_config(config), config)
    optimizer, schedule = build_optimizer(loss_net.trainable_params(), config, steps_per_epoch=1000)
    _, group_rates = schedule.for_step(0)
    step = TrainStep(loss_net, optimizer, config.grad_clip_norm, loss_scale=1.0)
    step.set_train(True)
    result["rss_built_mb"] = resident_mb()
    # Compiled on its own first, so that the memory the compiled graph holds is seen apart from the step's.
    compile_s, _ = timed_call(lambda: step.compile(group_rates, *tensors))
    result["rss_compiled_mb"] = resident_mb()
    log(f"train: graph compiled in {compile_s:.1f} s, resident memory {result['rss_compiled_mb'] or 0:.0f} MB "
        f"(model built: {result['rss_built_mb'] or 0:.0f} MB)")

    def train_step():
        outputs = run_mindspore(step, group_rates, *tensors)
        return float(outputs[0].asnumpy())

    first_s, loss = first_call("train", train_step)
    first_s += compile_s
    log(f"train: first loss {loss:.4f}")
    warm_up([train_step], args.warmup)
    times = interleaved_runs([train_step], args.runs, "train", args.lead_in)[0]
    result["mindspore"] = timing_record(first_s, times)
    result["parameters"] = int(sum(int(np.prod(p.shape)) for p in loss_net.trainable_params()))
    result["peak_rss_mb"] = peak_rss_mb()
    return result


class StageBlocks(nn.Cell):
    """The blocks of one of our Swin stages as a graph of its own. (B, H*W, C) -> (B, H*W, C)"""

    def __init__(self, stage):
        super().__init__()
        self.stage = stage

    def construct(self, x):
        return self.stage.forward_blocks(x)


def part_stages(config, args):
    """Swin stage by stage (blocks only, batch 1), MindSpore against PyTorch."""
    result = {"batch": 1, "threads": {"mindspore": setup_mindspore(args.ms_threads)}}
    swin, _ = build_our_encoders(config)
    reason = "--no_torch given" if args.no_torch else torch_unavailable_reason()
    if reason is None:
        import torch
        result["threads"]["torch"] = setup_torch(args.torch_threads[0])
        torch_swin = build_torch_swin(config, swin)
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate(swin.resolutions):
        tokens = rng.standard_normal((1, height * width, swin.dims[index]), dtype=np.float32)
        cell = StageBlocks(swin.layers[index])
        cell.set_train(False)
        x = ms.Tensor(tokens)
        calls = [lambda cell=cell, x=x: run_mindspore(cell, x)]
        if reason is None:
            blocks = torch_swin.encoder.layers[index].blocks
            t_tokens = torch.from_numpy(tokens)

            def torch_blocks(blocks=blocks, hidden=t_tokens, size=(height, width)):
                for block in blocks:
                    hidden = block(hidden, size)[0]
                return hidden

            calls += [torch_call(torch, threads, torch_blocks) for threads in args.torch_threads]
        label = (f"stages: Swin stage {index + 1} ({len(swin.layers[index].blocks)} blocks, {height}x{width}, "
                 f"C={swin.dims[index]})")
        names = ["MindSpore"] + [f"PyTorch ({plural(threads, 'thread')})" for threads in args.torch_threads]
        firsts = [first_call(f"{label} {name}", call)[0] for name, call in zip(names, calls)]
        warm_up(calls, args.warmup)
        times = interleaved_runs(calls, args.runs, label, args.lead_in)
        record = {"mindspore": timing_record(firsts[0], times[0]), "torch": None}
        if reason is None:
            record["torch"] = []
            for threads, first, steady in zip(args.torch_threads, firsts[1:], times[1:]):
                entry = dict(timing_record(first, steady), threads=threads)
                entry["ratio_mindspore_over_torch"] = record["mindspore"]["median_ms"] / entry["median_ms"]
                record["torch"].append(entry)
        result[f"swin_stage{index + 1}"] = record
    result["peak_rss_mb"] = peak_rss_mb()
    return result


PART_FUNCTIONS = {"encoders": part_encoders, "inference": part_inference, "train": part_train,
                  "stages": part_stages}


def run_child(args, config_argv):
    """Runs one part in this (child) process and writes its result as JSON to args.child_result.

    A part that raises leaves {"error": ...} with the exception's first line, and the exit code 1."""
    from model_utils.config import get_config
    config = get_config(config_argv, args.config_path)
    if args.recursion_limit:
        ms.set_recursion_limit(args.recursion_limit)
    failed = False
    try:
        result = PART_FUNCTIONS[args.child](config, args)
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
               "--torch_threads", ",".join(str(threads) for threads in args.torch_threads)]
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


def table_row(part, framework, record, rss=None):
    rss_text = f"{rss:.0f}" if isinstance(rss, (int, float)) else (rss or "")
    return (f"| {part} | {framework} | {record['median_ms']:.1f} | {record['q1_ms']:.1f}-{record['q3_ms']:.1f} | "
            f"{record['min_ms']:.1f}-{record['max_ms']:.1f} | {record['first_call_s']:.2f} | "
            f"{record['compile_s']:.2f} | {rss_text} |")


def plural(count, word):
    return f"{count} {word}{'' if count == 1 else 's'}"


def torch_label(entry):
    return f"PyTorch ({plural(entry['threads'], 'thread')})"


def encoder_rows(result):
    rows = []
    ms_label = f"MindSpore ({plural(result['mindspore']['threads'], 'thread')})"
    for key, label in (("swin", "Swin encoder"), ("bert", "BERT encoder"), ("total", "Swin + BERT")):
        rss = result.get("mindspore_peak_rss_mb") if key == "total" else None
        rows.append(table_row(label, ms_label, result["mindspore"][key], rss))
        for entry in result.get("torch") or []:
            rss = f"{result['peak_rss_mb']:.0f} (process, both)" if key == "total" else None
            rows.append(table_row(label, torch_label(entry), entry[key], rss))
    return rows


def stage_rows(result):
    rows = []
    for key in sorted(name for name in result if name.startswith("swin_stage")):
        label = f"Swin stage {key[len('swin_stage'):]} blocks"
        rows.append(table_row(label, "MindSpore", result[key]["mindspore"]))
        for entry in result[key].get("torch") or []:
            rows.append(table_row(label, torch_label(entry), entry))
    return rows


def part_rows(part, result):
    if "error" in result:
        error = result["error"].replace("|", "/")
        return [f"| {part} | failed: {error} | | | | | | {result.get('peak_rss_mb', 0):.0f} |"]
    if part == "encoders":
        return encoder_rows(result)
    if part == "inference":
        return [table_row("CoupAlign inference (B=1)", "MindSpore", result["mindspore"], result["peak_rss_mb"])]
    if part == "train":
        return [table_row(f"CoupAlign train step (B={result['batch']})", "MindSpore", result["mindspore"],
                          result["peak_rss_mb"])]
    return stage_rows(result)


def markdown_report(report):
    machine = report["machine"]
    versions = ", ".join(f"{name} {version or 'not installed'}" for name, version in machine["versions"].items())
    lines = [f"## CoupAlign CPU benchmark ({os.path.basename(report['config_path'])}: image {report['image_size']}, "
             f"{report['max_tokens']} tokens)", "",
             f"- Machine: {machine['cpu_model']}, {machine['cpu_count']} cores; load average (1/5/15 min) "
             f"{machine['load_average_at_start']} at start, {report.get('load_average_at_end')} at end",
             f"- Versions: Python {machine['python']}, {versions}",
             f"- Threads: {threads_text(report)}",
             f"- Protocol: median, interquartile range and min-max of {report['runs']} runs after "
             f"{report['warmup']} warm-up calls, each timed call right after {report.get('lead_in', 0)} untimed "
             "call(s) of the same function; "
             "encoders timed interleaved (MindSpore, PyTorch, MindSpore, ...) "
             "with the same weights; first call includes graph compilation; compile = first call - median; "
             "peak RSS = ru_maxrss of the child process that ran the part", "",
             "| part | framework | median ms | IQR ms | min-max ms | first call s | compile s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for part, result in report["parts"].items():
        lines += part_rows(part, result)
    lines.append("")
    lines += encoder_notes(report["parts"].get("encoders"))
    lines += train_notes(report["parts"].get("train"))
    return "\n".join(lines)


def train_notes(result):
    if not result or "error" in result or result.get("rss_compiled_mb") is None:
        return []
    return [f"Train step resident memory: {result['rss_built_mb']:.0f} MB with the model and optimizer built, "
            f"{result['rss_compiled_mb']:.0f} MB after compiling the training graph, {result['peak_rss_mb']:.0f} MB "
            f"at the peak ({result['parameters'] / 1e6:.1f} M parameters: weights, gradients and the two AdamW "
            f"moments take {result['parameters'] * 16 / 2 ** 20:.0f} MB)."]


def threads_text(report):
    text = (f"MindSpore CPU op threads {report['ms_threads']} "
            "(mindspore.device_context.cpu.op_tuning.threads_num)")
    if report["torch_enabled"]:
        text += (f"; PyTorch intra-op threads {', '.join(map(str, report['torch_threads']))} "
                 "(torch.set_num_threads, each timed)")
        for result in report["parts"].values():
            torch_threads = (result.get("threads") or {}).get("torch")
            if torch_threads:
                text += f", inter-op {torch_threads['inter_op_threads']}"
                break
    return text


def encoder_notes(result):
    if not result or "error" in result:
        return []
    if not result.get("torch"):
        return [f"PyTorch not measured: {result.get('torch_skipped_reason')}."]
    lines = []
    for entry in result["torch"]:
        ratio = entry["ratio_mindspore_over_torch"]
        lines.append(f"MindSpore / {torch_label(entry)}, ratio of medians: Swin {ratio['swin']:.2f}, "
                     f"BERT {ratio['bert']:.2f}, Swin + BERT {ratio['total']:.2f}.")
    parity = result["parity"]
    lines.append(f"Parity with the same weights: Swin max |diff| {parity['swin_max_abs_diff']:.2e}, BERT "
                 f"{parity['bert_max_abs_diff']:.2e} ({'OK' if parity['ok'] else 'MISMATCH'}, tolerance "
                 f"{parity['tolerance']:g}). PyTorch attention: {result.get('torch_attn_implementation')}.")
    return lines


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
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
    parser.add_argument("--child", choices=ALL_PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--child_result", help=argparse.SUPPRESS)
    args, config_argv = parser.parse_known_args(argv)
    args.config_path = os.path.abspath(args.config_path)
    if args.runs < 1 or args.warmup < 0 or args.train_batch < 1 or args.ms_threads < 1:
        parser.error("--runs, --train_batch and --ms_threads must be at least 1, --warmup at least 0")
    args.part_list = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = [part for part in args.part_list if part not in ALL_PARTS]
    if unknown or not args.part_list:
        parser.error(f"--parts takes a comma list of {', '.join(ALL_PARTS)}; got {args.parts!r}")
    return args, config_argv


def load_average():
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def main(argv=None):
    args, config_argv = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        return run_child(args, config_argv)
    from model_utils.config import ConfigError, get_config
    try:
        config = get_config(config_argv, args.config_path)
    except ConfigError as err:
        sys.exit(f"error: {err}")
    reason = "--no_torch given" if args.no_torch else torch_unavailable_reason()
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


if __name__ == "__main__":
    sys.exit(main())
