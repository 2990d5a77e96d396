"""Hugging Face BERT (model.safetensors or pytorch_model.bin) -> checkpoint of `src.models.bert.BertModel`.

    python -m src.tools.convert_bert --src bert-base-uncased/ --dst bert.ckpt [--config_path C] [--num_heads H]

Target architecture: without --config_path it is read from the weights themselves (vocabulary,
hidden size, layers, feed-forward width, positions), so any BERT converts as it is; the head count,
which no weight shape holds, comes from --num_heads, else config.json next to the weights, else
the default config. With --config_path the target is the BertModel that CoupAlign builds from that
config, and a checkpoint that does not fit it is an error naming the parameter.
"""
import argparse
import json
import os
import re

import numpy as np

from ..checkpoint import parameter_shapes
from .common import (ConversionError, check_params, read_state_dict, run_cli,
                     save_params, strip_prefix, summarise)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Pre-training heads and pooler: CoupAlign uses the word features only.
HEAD_PREFIXES = ("pooler.", "cls.", "classifier.", "qa_outputs.")
BUFFER_KEYS = ("embeddings.position_ids",)
LAYER_RENAMES = {
    "attention.output.dense": "attention_output",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "output_norm",
}
QKV_PARTS = ("query", "key", "value")
_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")


def resolve_source(src):
    """(weights file, config.json path or None) for a directory or a file."""
    if os.path.isdir(src):
        for name in WEIGHT_FILES:
            if os.path.isfile(os.path.join(src, name)):
                weights = os.path.join(src, name)
                break
        else:
            raise ConversionError(f"{src} holds neither {' nor '.join(WEIGHT_FILES)}")
    elif os.path.isfile(src):
        weights = src
    else:
        raise ConversionError(f"input not found: {src}")
    config_json = os.path.join(os.path.dirname(os.path.abspath(weights)), "config.json")
    return weights, config_json if os.path.isfile(config_json) else None


def normalise_names(state_dict):
    """Strips "bert."; renames old-style LayerNorm gamma/beta to weight/bias."""
    state_dict = strip_prefix(state_dict, ("module.",))
    renamed = {}
    for key, value in state_dict.items():
        key = key[len("bert."):] if key.startswith("bert.") else key
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
        key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
        renamed[key] = value
    return renamed


def _check_is_bert(state_dict):
    if "embeddings.word_embeddings.weight" in state_dict:
        return
    keys = list(state_dict)
    if "patch_embed.proj.weight" in state_dict:
        raise ConversionError("this is a Swin checkpoint, not a BERT one (use src.tools.convert_swin)")
    raise ConversionError("this is not a Hugging Face BERT checkpoint: no embeddings.word_embeddings.weight "
                          f"(keys: {summarise(keys) or 'none'})")


def _norm_suffix(suffix):
    """LayerNorm weight/bias -> gamma/beta."""
    return {"weight": "gamma", "bias": "beta"}[suffix]


def _layer_param(module, suffix):
    """Our name inside layers.{i} for HF `encoder.layer.{i}.<module>.<suffix>` (module in LAYER_RENAMES)."""
    ours = LAYER_RENAMES[module]
    return f"{ours}.{_norm_suffix(suffix) if ours.endswith('_norm') else suffix}"


def map_bert_state_dict(state_dict):
    """(our {name: array}, unknown HF keys) with q/k/v fused; heads, pooler and buffers left out."""
    params, unknown, qkv = {}, [], {}
    for key, array in state_dict.items():
        if key.startswith(HEAD_PREFIXES) or key in BUFFER_KEYS:
            continue
        match = _LAYER_KEY.match(key)
        if key.startswith("embeddings.") and key.endswith("_embeddings.weight"):
            params[key[:-len("weight")] + "embedding_table"] = array
        elif key in ("embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"):
            params["embeddings.LayerNorm." + _norm_suffix(key.rsplit(".", 1)[1])] = array
        elif match:
            layer, module, suffix = match.groups()
            part = module[len("attention.self."):] if module.startswith("attention.self.") else None
            if part in QKV_PARTS:
                qkv.setdefault((layer, suffix), {})[part] = array
            elif module in LAYER_RENAMES:
                params[f"layers.{layer}.{_layer_param(module, suffix)}"] = array
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    for (layer, suffix), parts in qkv.items():
        missing = [part for part in QKV_PARTS if part not in parts]
        if missing:
            raise ConversionError(f"encoder.layer.{layer}.attention.self.{missing[0]}.{suffix} is missing "
                                  f"(needed for layers.{layer}.attention.qkv.{suffix})")
        params[f"layers.{layer}.attention.qkv.{suffix}"] = np.concatenate([parts[p] for p in QKV_PARTS], axis=0)
    return params, unknown


def skipped_keys(state_dict):
    """HF keys deliberately dropped: pooler / task heads and buffers."""
    return [key for key in state_dict if key.startswith(HEAD_PREFIXES) or key in BUFFER_KEYS]


def convert_bert_state_dict(state_dict, target_net):
    """{HF BERT key: array} -> {our parameter name: array} fitting `target_net` exactly."""
    state_dict = normalise_names(state_dict)
    _check_is_bert(state_dict)
    params, unknown = map_bert_state_dict(state_dict)
    if unknown:
        raise ConversionError(f"the checkpoint has weights with no place in BertModel: {summarise(unknown)}")
    check_params(params, target_net, " (does the target config describe this checkpoint?)")
    extra = sorted(set(params) - set(parameter_shapes(target_net)))
    if extra:
        raise ConversionError(f"the checkpoint has weights the target network has no place for: "
                              f"{summarise(extra)} (more layers than the target?)")
    return {name: params[name].astype(np.float32) for name in parameter_shapes(target_net)}


def infer_architecture(state_dict, num_heads):
    """BertModel keyword arguments read off the (normalised) weight shapes."""
    _check_is_bert(state_dict)
    vocab_size, hidden_size = state_dict["embeddings.word_embeddings.weight"].shape
    layers = {int(match.group(1)) for match in map(_LAYER_KEY.match, state_dict) if match}
    if not layers:
        raise ConversionError("the checkpoint has no encoder.layer.{i} weights")
    intermediate = state_dict.get("encoder.layer.0.intermediate.dense.weight")
    if intermediate is None:
        raise ConversionError("the checkpoint has no encoder.layer.0.intermediate.dense.weight")
    return {
        "vocab_size": int(vocab_size), "hidden_size": int(hidden_size),
        "num_hidden_layers": max(layers) + 1, "num_attention_heads": num_heads,
        "intermediate_size": int(intermediate.shape[0]),
        "max_position_embeddings": int(state_dict["embeddings.position_embeddings.weight"].shape[0]),
        "type_vocab_size": int(state_dict["embeddings.token_type_embeddings.weight"].shape[0]),
    }


def choose_num_heads(flag, config_json, default_heads, hidden_size):
    """Head count: --num_heads, else config.json, else the config's if it divides the width, else 1."""
    if flag:
        return flag
    if config_json:
        with open(config_json, "r", encoding="utf-8") as handle:
            heads = json.load(handle).get("num_attention_heads")
        if heads:
            return int(heads)
    return default_heads if hidden_size % default_heads == 0 else 1


def build_target(args, state_dict, config_json):
    """(BertModel, its constructor arguments) from --config_path, or from the default config with the
    architecture inferred from the weights."""
    from model_utils.config import ConfigError, get_config
    from src.models.bert import BertModel
    try:
        config = get_config([], args.config_path)
    except ConfigError as err:
        raise ConversionError(str(err)) from err
    if args.config_path:
        overrides = {"num_attention_heads": args.num_heads or None}
    else:
        hidden = state_dict["embeddings.word_embeddings.weight"].shape[1]
        heads = choose_num_heads(args.num_heads, config_json, config.bert_num_heads, hidden)
        overrides = infer_architecture(state_dict, heads)
    try:
        return BertModel.from_config(config, **overrides), BertModel.config_arguments(config, **overrides)
    except ValueError as err:
        raise ConversionError(f"cannot build the target BertModel: {err}") from err


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="directory with model.safetensors / pytorch_model.bin, or the file")
    parser.add_argument("--dst", required=True, help="output MindSpore checkpoint")
    parser.add_argument("--config_path", default=None,
                        help="build the target from this config's bert_* keys (default: infer from the weights)")
    parser.add_argument("--num_heads", type=int, default=None, help="attention heads (not stored in the weights)")
    return parser.parse_args(argv)


def run(args):
    """Converts args.src to args.dst; returns the converted {name: array}."""
    weights, config_json = resolve_source(args.src)
    print(f"reading {weights}", flush=True)
    state_dict = normalise_names(read_state_dict(weights))
    _check_is_bert(state_dict)
    target, arch = build_target(args, state_dict, config_json)
    print(f"target BertModel: {arch}", flush=True)
    params = convert_bert_state_dict(state_dict, target)
    save_params(params, args.dst)
    skipped = skipped_keys(state_dict)
    print(f"converted {len(state_dict) - len(skipped)} tensors into {len(params)} parameters (q/k/v fused)")
    if skipped:
        print(f"skipped (pooler, task heads, buffers): {summarise(skipped)}")
    print(f"wrote {args.dst}")
    return params


def main(argv=None):
    run_cli(parse_args, run, argv)


if __name__ == "__main__":
    main()
