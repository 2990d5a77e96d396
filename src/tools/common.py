"""Helpers shared by the weight converters: reading foreign checkpoints, checking and saving."""
import os
import sys

import mindspore as ms
import numpy as np

from ..checkpoint import compare_shapes, save_checkpoint
# Converters read the target's {name: shape} under this name.
from ..checkpoint import parameter_shapes

# Keys under which training scripts nest the state dict inside a .pth file.
NESTED_STATE_KEYS = ("model", "state_dict", "module")


class ConversionError(Exception):
    """An input file or target architecture that the converter cannot handle; the message says why."""


def _to_numpy(value):
    """torch tensor -> numpy (floating point as float32); None for anything that is not a tensor."""
    import torch
    if not isinstance(value, torch.Tensor):
        return None
    value = value.detach().cpu()
    if value.is_floating_point():
        value = value.float()
    return value.numpy()


def _unwrap_state_dict(obj, path):
    """The tensor mapping inside a loaded .pth object (bare, or under "model"/"state_dict"/"module")."""
    if not isinstance(obj, dict):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict")
    for key in NESTED_STATE_KEYS:
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def read_torch_state_dict(path):
    """{name: np.ndarray} of a PyTorch .pth/.bin file, loaded with weights_only=True."""
    try:
        import torch
    except ImportError as err:
        raise ConversionError(f"reading {path} needs PyTorch (pip install torch): {err}") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign or corrupt files
        # weights_only refuses arbitrary objects (e.g. a saved training config); name the one it met.
        detail = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), "")
        raise ConversionError(f"cannot read {path} as a PyTorch checkpoint ({type(err).__name__}): it is not a "
                              "file written by torch.save, or it holds objects other than tensors"
                              + (f" ({detail})" if detail else "")) from err
    arrays = {}
    for name, value in _unwrap_state_dict(obj, path).items():
        array = _to_numpy(value)
        if array is not None:
            arrays[str(name)] = array
    return arrays


def _as_float32(array):
    return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array


def read_safetensors(path):
    """{name: np.ndarray} of a .safetensors file, floating point as float32 (no torch needed)."""
    from safetensors.numpy import load_file
    try:
        arrays = load_file(path)
    except Exception as err:  # safetensors raises its own error type for foreign files
        raise ConversionError(f"cannot read {path} as a safetensors file: {err}") from err
    return {name: _as_float32(array) for name, array in arrays.items()}


def read_state_dict(path):
    """{name: np.ndarray} of a checkpoint file, by extension: .safetensors, else a PyTorch pickle."""
    if not os.path.isfile(path):
        raise ConversionError(f"input file not found: {path}")
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    return read_torch_state_dict(path)


def strip_prefix(state_dict, prefixes):
    """Drops the first of `prefixes` that every key carries (e.g. "module." of DataParallel)."""
    for prefix in prefixes:
        if state_dict and all(name.startswith(prefix) for name in state_dict):
            return {name[len(prefix):]: value for name, value in state_dict.items()}
    return state_dict


def check_params(params, net, hint=""):
    """Raises ConversionError naming the first parameter of `net` that is absent or misshapen in `params`."""
    expected = parameter_shapes(net)
    missing, mismatched, _ = compare_shapes(expected, {name: array.shape for name, array in params.items()})
    missing = set(missing)
    for name, shape in expected.items():
        if name in missing:
            raise ConversionError(f"parameter {name} {shape} was not produced from the checkpoint{hint}")
        if name in mismatched:
            raise ConversionError(f"parameter {name}: checkpoint gives shape {mismatched[name][0]}, "
                                  f"target network expects {shape}{hint}")


def save_params(params, dst):
    """Writes {name: np.ndarray} as a MindSpore checkpoint, through a temporary file renamed at the end."""
    save_checkpoint([{"name": name, "data": ms.Tensor(array)} for name, array in params.items()], dst)


def summarise(names, limit=6):
    """'a, b, c, ... (+N more)' for messages."""
    names = list(names)
    text = ", ".join(names[:limit])
    return text + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")


def run_cli(parse_args, run, argv=None):
    """A converter's main: parses `argv` (default sys.argv[1:]) and runs it; a ConversionError exits with its
    message and no traceback."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ConversionError as err:
        sys.exit(f"error: {err}")
