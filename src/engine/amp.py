"""Mixed precision for GPU/Ascend, keeping the network object (and its methods) as it is."""
import mindspore as ms
import mindspore.nn as nn

AMP_LEVELS = ("O0", "O2", "O3")


def apply_mixed_precision(net, amp_level):
    """Float16 compute for `net` in place: O2 keeps LayerNorm and GroupNorm in float32, O3 casts all.

    Softmax inside the attention Cells and the losses run in float32 whatever the input type, and
    CoupAlign returns float32 logits. (ms.amp.auto_mixed_precision wraps the network in a new Cell,
    which would hide CoupAlign.forward_train from the loss wrapper.)
    """
    if amp_level not in AMP_LEVELS:
        raise ValueError(f"amp_level must be one of {AMP_LEVELS}, got '{amp_level}'")
    if amp_level == "O0":
        return net
    net.to_float(ms.float16)
    if amp_level == "O2":
        for _, cell in net.cells_and_names():
            if isinstance(cell, (nn.LayerNorm, nn.GroupNorm)):
                cell.to_float(ms.float32)
    return net
