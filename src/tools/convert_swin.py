"""Official Swin Transformer .pth -> MindSpore checkpoint of `src.models.swin.SwinTransformer`.

    python -m src.tools.convert_swin --src swin_base_patch4_window12_384_22k.pth --dst swin.ckpt \
        [--config_path default_config.yaml] [--window_size 12] [--image_size 480]

The target architecture is the one CoupAlign builds from the config (keys image_size, swin_*);
explicit flags override single keys. Relative position tables are resized bicubically when the
target window differs from the checkpoint's (as the official Swin code does when fine-tuning).
"""
import argparse
import math

import numpy as np

from ..checkpoint import parameter_shapes
from .common import (ConversionError, check_params, read_state_dict, run_cli,
                     save_params, strip_prefix, summarise)

TABLE_SUFFIX = "relative_position_bias_table"
BUFFER_SUFFIXES = ("relative_position_index", "attn_mask")
# Classification head and the final norm before it: not part of a dense-prediction backbone.
HEAD_PREFIXES = ("head.", "norm.")
WRAPPER_PREFIXES = ("module.", "backbone.", "encoder.")


def source_name(target_name):
    """Official Swin key of one of our parameter names (LayerNorm gamma/beta were weight/bias)."""
    if target_name.endswith(".gamma"):
        return target_name[:-len("gamma")] + "weight"
    if target_name.endswith(".beta"):
        return target_name[:-len("beta")] + "bias"
    return target_name


def resize_relative_position_table(table, target_shape, name=TABLE_SUFFIX):
    """((2w-1)^2, heads) table -> ((2w'-1)^2, heads) by bicubic interpolation of each head's grid."""
    length, heads = table.shape
    target_length, target_heads = target_shape
    if heads != target_heads:
        raise ConversionError(f"parameter {name}: checkpoint has {heads} heads, target network expects "
                              f"{target_heads} (shapes {table.shape} vs {tuple(target_shape)})")
    if length == target_length:
        return table
    side, target_side = math.isqrt(length), math.isqrt(target_length)
    if side * side != length or target_side * target_side != target_length:
        raise ConversionError(f"parameter {name}: {length} -> {target_length} rows is not a square-window table")
    import torch
    import torch.nn.functional as F
    grid = torch.from_numpy(np.ascontiguousarray(table.T, dtype=np.float32)).reshape(1, heads, side, side)
    resized = F.interpolate(grid, size=(target_side, target_side), mode="bicubic", align_corners=False)
    return np.ascontiguousarray(resized.reshape(heads, target_length).numpy().T)


def _check_is_swin(state_dict):
    """Raises ConversionError unless the keys use the official Swin naming."""
    if "patch_embed.proj.weight" in state_dict:
        return
    keys = list(state_dict)
    if any(key.startswith("embeddings.patch_embeddings.") for key in keys):
        raise ConversionError("this is a Hugging Face Swin state dict; give the official .pth "
                              "(patch_embed.proj, layers.{i}.blocks.{j}.attn.qkv, ...)")
    if any(key.startswith(("embeddings.word_embeddings", "encoder.layer.")) for key in keys):
        raise ConversionError("this is a BERT checkpoint, not a Swin one (use src.tools.convert_bert)")
    raise ConversionError("this is not an official Swin checkpoint: no patch_embed.proj.weight "
                          f"(keys: {summarise(keys) or 'none'})")


def classify_unused(state_dict, target_net):
    """Checkpoint keys no target parameter uses: {"buffers": [...], "head": [...], "other": [...]}."""
    used = {source_name(name) for name in parameter_shapes(target_net)}
    groups = {"buffers": [], "head": [], "other": []}
    for key in state_dict:
        if key in used:
            continue
        if key.endswith(BUFFER_SUFFIXES):
            groups["buffers"].append(key)
        elif key.startswith(HEAD_PREFIXES):
            groups["head"].append(key)
        else:
            groups["other"].append(key)
    return groups


def convert_swin_state_dict(state_dict, target_net):
    """{official Swin key: array} -> {our parameter name: array} fitting `target_net` exactly."""
    state_dict = strip_prefix(state_dict, WRAPPER_PREFIXES)
    _check_is_swin(state_dict)
    hint = " (do the config's image_size / swin_* keys describe this checkpoint?)"
    params = {}
    for name, shape in parameter_shapes(target_net).items():
        key = source_name(name)
        if key not in state_dict:
            raise ConversionError(f"the checkpoint has no {key} for parameter {name} {shape}{hint}")
        array = state_dict[key]
        if name.endswith(TABLE_SUFFIX) and tuple(array.shape) != shape:
            array = resize_relative_position_table(array, shape, name)
        params[name] = array.astype(np.float32)
    check_params(params, target_net, hint)
    extra = classify_unused(state_dict, target_net)["other"]
    if extra:
        raise ConversionError(f"the checkpoint has weights the target network has no place for: "
                              f"{summarise(extra)}{hint}")
    return params


def build_target(config, overrides):
    """The SwinTransformer that CoupAlign builds from `config`, with `overrides` (None = keep) applied.

    -> (network, its constructor arguments)
    """
    from src.models.swin import SwinTransformer
    try:
        return SwinTransformer.from_config(config, **overrides), SwinTransformer.config_arguments(config, **overrides)
    except ValueError as err:
        raise ConversionError(f"cannot build the target Swin: {err}") from err


def _int_list(text):
    return tuple(int(item) for item in text.replace("(", "").replace(")", "").split(",") if item.strip())


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="official Swin .pth (state dict, possibly under 'model')")
    parser.add_argument("--dst", required=True, help="output MindSpore checkpoint")
    parser.add_argument("--config_path", default=None, help="config whose image_size / swin_* keys give the target")
    parser.add_argument("--image_size", "--img_size", dest="img_size", type=int, default=None)
    parser.add_argument("--patch_size", type=int, default=None)
    parser.add_argument("--embed_dim", type=int, default=None)
    parser.add_argument("--depths", type=_int_list, default=None, help="e.g. 2,2,18,2")
    parser.add_argument("--num_heads", type=_int_list, default=None, help="e.g. 4,8,16,32")
    parser.add_argument("--window_size", type=int, default=None)
    parser.add_argument("--mlp_ratio", type=float, default=None)
    return parser.parse_args(argv)


def run(args):
    """Converts args.src to args.dst; returns the converted {name: array}."""
    from model_utils.config import ConfigError, get_config
    try:
        config = get_config([], args.config_path)
    except ConfigError as err:
        raise ConversionError(str(err)) from err
    overrides = {key: getattr(args, key) for key in
                 ("img_size", "patch_size", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio")}
    print(f"reading {args.src}", flush=True)
    state_dict = strip_prefix(read_state_dict(args.src), WRAPPER_PREFIXES)
    _check_is_swin(state_dict)
    target, arch = build_target(config, overrides)
    print(f"target Swin: {arch}", flush=True)
    params = convert_swin_state_dict(state_dict, target)
    resized = [name for name in params
               if name.endswith(TABLE_SUFFIX) and state_dict[name].shape != params[name].shape]
    unused = classify_unused(state_dict, target)
    save_params(params, args.dst)
    print(f"converted {len(params)} tensors"
          + (f"; resized {len(resized)} relative position tables to window {arch['window_size']}" if resized else ""))
    if unused["head"]:
        print(f"skipped classification head / final norm: {summarise(unused['head'])}")
    if unused["buffers"]:
        print(f"skipped {len(unused['buffers'])} buffers (relative_position_index, attn_mask)")
    print(f"wrote {args.dst}")
    return params


def main(argv=None):
    run_cli(parse_args, run, argv)


if __name__ == "__main__":
    main()
