"""Checkpoint files: atomic saving, strict loading of network weights, training state for resume, and
converted encoder checkpoints (convert_swin / convert_bert) loaded into sub-networks of CoupAlign."""
import os

import mindspore as ms

from .files import atomic_path


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the network."""


def save_checkpoint(save_obj, path, append_dict=None):
    """Writes `path` through a temporary file, so a crash never leaves a half-written checkpoint."""
    with atomic_path(path, suffix=".ckpt") as temp:
        ms.save_checkpoint(save_obj, temp, append_dict=append_dict)


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


def parameter_shapes(net, prefix=""):
    """{prefix + parameter name relative to `net`: shape} of a Cell."""
    return {prefix + name: tuple(param.shape) for name, param in net.parameters_and_names()}


def compare_shapes(expected, available):
    """The strict check of weights against a network: {name: shape} the network `expected` vs the
    {name: shape} `available` -> (missing, mismatched, unexpected).

    missing: expected names not available; mismatched: {name: (available shape, expected shape)};
    unexpected: available names not expected. Names keep the order of `expected` (of `available` for
    unexpected), so every caller can phrase its own error about the first ones.
    """
    missing, mismatched = [], {}
    for name, shape in expected.items():
        if name not in available:
            missing.append(name)
        elif tuple(available[name]) != tuple(shape):
            mismatched[name] = (tuple(available[name]), tuple(shape))
    unexpected = [name for name in available if name not in expected]
    return missing, mismatched, unexpected


def _mismatch_texts(mismatched):
    return [f"{name}: checkpoint {saved} vs network {wanted}" for name, (saved, wanted) in mismatched.items()]


def _saved_shapes(param_dict, prefix=""):
    return {name: tuple(value.shape) for name, value in param_dict.items() if name.startswith(prefix)}


def load_network_weights(net, path, param_dict=None):
    """Loads every parameter of `net` from `path`; a missing or misshapen one is an error naming it.

    Entries of the checkpoint that the network does not have (optimiser state, loss heads) are ignored.
    """
    param_dict = read_checkpoint(path) if param_dict is None else param_dict
    expected = {param.name: tuple(param.shape) for param in net.get_parameters()}
    missing, mismatched, _ = compare_shapes(expected, _saved_shapes(param_dict))
    if missing or mismatched:
        details = []
        if mismatched:
            details.append(f"{len(mismatched)} shape mismatch(es), e.g. " + "; ".join(_mismatch_texts(mismatched)[:3]))
        if missing:
            details.append(f"{len(missing)} parameter(s) missing, e.g. " + ", ".join(missing[:3]))
        raise CheckpointError(f"checkpoint {path} does not fit this network (was it trained with another "
                              f"config?): " + " | ".join(details))
    ms.load_param_into_net(net, {name: param_dict[name] for name in expected}, strict_load=True)
    return param_dict


def _match(net, saved, prefix, ckpt_path):
    """(missing, unexpected) names relative to `net`; raises CheckpointError naming every misshapen parameter."""
    missing, mismatched, unexpected = compare_shapes(parameter_shapes(net, prefix), _saved_shapes(saved, prefix))
    if mismatched:
        more = f" (+{len(mismatched) - 5} more)" if len(mismatched) > 5 else ""
        raise CheckpointError(f"{ckpt_path} does not fit the network: " + "; ".join(_mismatch_texts(mismatched)[:5])
                              + more)
    return [name[len(prefix):] for name in missing], unexpected


def _assign(net, saved, prefix):
    for name, param in net.parameters_and_names():
        entry = saved.get(prefix + name)
        if entry is not None:
            param.set_data(ms.Tensor(entry.asnumpy(), dtype=param.dtype))


def load_checkpoint_into(net, ckpt_path, prefix="", strict=False):
    """Copies checkpoint entries `prefix + <name inside net>` into `net`; returns (missing, unexpected).

    Names are taken relative to `net`, so `net` may be a sub-cell (CoupAlign.swin, whose parameters
    are called swin.xxx) while the checkpoint holds the bare names a converter writes. A shape
    mismatch is always an error; missing or unexpected entries are errors only when `strict`.
    """
    saved = read_checkpoint(ckpt_path)
    missing, unexpected = _match(net, saved, prefix, ckpt_path)
    if strict and (missing or unexpected):
        raise CheckpointError(f"{ckpt_path} does not match the network: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    _assign(net, saved, prefix)
    if missing:
        print(f"{ckpt_path}: {len(missing)} parameter(s) not in the checkpoint: {', '.join(missing[:5])}")
    if unexpected:
        print(f"{ckpt_path}: {len(unexpected)} entr(ies) not used: {', '.join(unexpected[:5])}")
    return missing, unexpected


def load_pretrained(net, ckpt_path, label):
    """Loads a converted encoder checkpoint; every parameter of `net` must be in it. Returns the count."""
    saved = read_checkpoint(ckpt_path)
    missing, unexpected = _match(net, saved, "", ckpt_path)
    total = len(list(net.parameters_and_names()))
    if missing:
        raise CheckpointError(f"{label} checkpoint {ckpt_path} lacks {len(missing)} of the network's {total} "
                              f"parameters, e.g. {', '.join(missing[:3])} (converted for another config, or "
                              f"not a {label} checkpoint?)")
    _assign(net, saved, "")
    print(f"loaded {total} {label} parameters from {ckpt_path}"
          + (f"; ignored {len(unexpected)} unexpected entries, e.g. {', '.join(unexpected[:3])}"
             if unexpected else ""), flush=True)
    return total
