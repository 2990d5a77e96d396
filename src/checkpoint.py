"""Checkpoint files: atomic saving, strict loading of network weights, training state for resume."""
import os

import mindspore as ms


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the network."""


def save_checkpoint(save_obj, path, append_dict=None):
    """Writes `path` through a temporary file, so a crash never leaves a half-written checkpoint."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # MindSpore appends ".ckpt" to names without it, so the temporary name keeps that suffix.
    temp = os.path.join(directory, f".{os.path.basename(path)}.partial.ckpt")
    ms.save_checkpoint(save_obj, temp, append_dict=append_dict)
    os.replace(temp, path)


def read_checkpoint(path):
    """{name: Parameter} of a checkpoint file; errors name the file."""
    if not path:
        raise CheckpointError("no checkpoint given (--ckpt_path)")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return ms.load_checkpoint(path)
    except Exception as err:  # MindSpore raises ValueError/RuntimeError for foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err


def load_network_weights(net, path, param_dict=None):
    """Loads every parameter of `net` from `path`; a missing or misshapen one is an error naming it.

    Entries of the checkpoint that the network does not have (optimiser state, loss heads) are ignored.
    """
    param_dict = read_checkpoint(path) if param_dict is None else param_dict
    missing, mismatched = [], []
    selected = {}
    for param in net.get_parameters():
        saved = param_dict.get(param.name)
        if saved is None:
            missing.append(param.name)
        elif tuple(saved.shape) != tuple(param.shape):
            mismatched.append(f"{param.name}: checkpoint {tuple(saved.shape)} vs network {tuple(param.shape)}")
        else:
            selected[param.name] = saved
    if missing or mismatched:
        details = []
        if mismatched:
            details.append(f"{len(mismatched)} shape mismatch(es), e.g. " + "; ".join(mismatched[:3]))
        if missing:
            details.append(f"{len(missing)} parameter(s) missing, e.g. " + ", ".join(missing[:3]))
        raise CheckpointError(f"checkpoint {path} does not fit this network (was it trained with another "
                              f"config?): " + " | ".join(details))
    ms.load_param_into_net(net, selected, strict_load=True)
    return param_dict
