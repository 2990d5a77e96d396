"""CoupAlign with its intermediate outputs, for prediction records and validation diagnostics."""
import mindspore as ms
import mindspore.nn as nn


class WithProposals(nn.Cell):
    """(B, 3, S, S), (B, T), (B, T) -> mask logits (B, 1, S, S), SMA weights (B, N), proposals Y_N (B, N, h, w),
    their combination M (B, 1, h, w)."""

    def __init__(self, net):
        # No prefix: with one, wrapping would rename the network's parameters to net.* (checkpoints written
        # after a validation with diagnostics would then not load).
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, image, input_ids, attention_mask):
        outputs = self.net.forward_train(image, input_ids, attention_mask)
        logits = self.net.upsample(outputs["low_res_mask"]).astype(ms.float32)
        return (logits, outputs["weights"].astype(ms.float32), outputs["proposals"].astype(ms.float32),
                outputs["low_res_mask"].astype(ms.float32))
