"""Segmentation (BCE + Dice), auxiliary foreground/background contrastive and matched-proposal losses, and the
same mask losses after the earlier decoder layers (deep supervision)."""
import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops

from .layers import broadcast_as

NEG_INF = -1.0e4
_BATCH_MATMUL = ops.BatchMatMul()


def bce_with_logits(logits, target):
    """Mean binary cross-entropy on logits, numerically stable. (B, 1, S, S) x2 -> ()"""
    loss = ops.relu(logits) - logits * target + ops.log1p(ops.exp(-ops.abs(logits)))
    return loss.mean()


def dice_loss(logits, target, smooth=1.0):
    """1 - soft Dice per sample, averaged over the batch. (B, 1, S, S) x2 -> ()"""
    prob = ops.sigmoid(logits).reshape(logits.shape[0], -1)
    target = target.reshape(target.shape[0], -1)
    inter = (prob * target).sum(axis=1)
    dice = (2.0 * inter + smooth) / (prob.sum(axis=1) + target.sum(axis=1) + smooth)
    return (1.0 - dice).mean()


def l2_normalize(x, axis):
    """x / max(||x||, 1e-6) along `axis`, from differentiable primitives.

    (ops.L2Normalize's CPU gradient kernel took 24 s per call on the full-size 256 x 120 x 120 pixel
    embedding: 48 of the 56 s of a batch-1 training step.)
    """
    squares = (x * x).sum(axis=axis, keepdims=True)
    return x / broadcast_as(ops.sqrt(ops.maximum(squares, 1e-12)), x)


def foreground_contrast_loss(pixel_embed, anchor, fg_mask, temperature):
    """InfoNCE with the sentence as anchor: each foreground pixel against all background pixels.

    P (B, C, h, w), anchor (B, C), foreground (B, 1, h, w) in {0, 1} -> ()
    """
    batch, dim = pixel_embed.shape[0], pixel_embed.shape[1]
    pixels = l2_normalize(pixel_embed.reshape(batch, dim, -1), axis=1)
    anchor = l2_normalize(anchor, axis=1)
    sims = _BATCH_MATMUL(anchor[:, None, :], pixels).reshape(batch, -1) / temperature
    fg = fg_mask.reshape(batch, -1)
    bg_sims = sims + fg * NEG_INF
    bg_lse = ops.logsumexp(bg_sims, 1, True)
    # -log(e^s / (e^s + sum_bg e^n)) = log(e^s + e^lse) - s
    per_pixel = ops.logaddexp(sims, bg_lse) - sims
    return (per_pixel * fg).sum() / ops.maximum(fg.sum(), 1.0)


def mask_coverage(mask, size):
    """Share of each low-resolution cell that the mask covers (area average over the cell's pixels), the
    ground truth of the low-resolution losses. (B, 1, S, S) in {0, 1}, size (h, w) with S a multiple of
    both -> (B, 1, h, w) in [0, 1]

    Not nearest-neighbour downsampling: that samples one pixel per cell (its top-left one for 4x4 cells),
    which shifts the target by 1.5 pixels against the cell centres that the bilinear upsampling of M
    assumes, and a model trained on it draws its masks 1.5 pixels up and left.
    """
    batch, channels, height, width = mask.shape
    rows, columns = size
    if height % rows or width % columns:
        raise ValueError(f"mask size {height}x{width} is not a multiple of the low resolution {rows}x{columns}")
    cells = mask.reshape(batch, channels, rows, height // rows, columns, width // columns)
    return cells.mean(axis=(3, 5))


def proposal_costs(proposals, target, smooth=1.0):
    """BCE + Dice of every proposal against the target, at the proposals' resolution.
    Y (B, N, h, w) logits, target (B, 1, h, w) in [0, 1] (mask_coverage) -> (B, N)"""
    target = broadcast_as(target, proposals)
    bce = (ops.relu(proposals) - proposals * target + ops.log1p(ops.exp(-ops.abs(proposals)))).mean(axis=(2, 3))
    prob = ops.sigmoid(proposals)
    inter = (prob * target).sum(axis=(2, 3))
    dice = 1.0 - (2.0 * inter + smooth) / (prob.sum(axis=(2, 3)) + target.sum(axis=(2, 3)) + smooth)
    return bce + dice


def best_match(costs):
    """One-hot (B, N) of the lowest cost per sample, without gradient. (B, N) -> (B, N)"""
    return ops.stop_gradient(ops.one_hot(costs.argmin(axis=1), costs.shape[1], ops.ones((), costs.dtype),
                                         ops.zeros((), costs.dtype)))


def matched_proposal_loss(proposals, target):
    """Mask loss of the proposal that matches the target best (lowest proposal_costs), as set-prediction
    decoders match their queries; the choice itself carries no gradient. Y (B, N, h, w), target -> ()"""
    costs = proposal_costs(proposals, target)
    return (costs * best_match(costs)).sum(axis=1).mean()


def selection_loss(weights, proposals, target):
    """Cross-entropy of the SMA weights against the best-matching proposal: teaches SMA to pick the proposal
    that is the target. weights (B, N), Y (B, N, h, w), target (B, 1, h, w) -> ()"""
    best = best_match(ops.stop_gradient(proposal_costs(proposals, target)))
    return -(best * ops.log(ops.maximum(weights, 1e-8))).sum(axis=1).mean()


class CoupAlignWithLoss(nn.Cell):
    """Training wrapper. image, ids, mask, gt (B, 1, S, S) -> total, (bce, dice, aux, proposal) of the last layer"""

    def __init__(self, network, config):
        # No prefix: checkpoints of the training cell keep the network's own names (swin.*, bert.*, ...).
        super().__init__(auto_prefix=False)
        self.network = network
        self.bce_weight = config.loss_bce
        self.dice_weight = config.loss_dice
        self.aux_weight = config.loss_aux
        self.temperature = config.aux_temperature
        self.proposal_weight = config.loss_proposal
        self.selection_weight = config.loss_selection
        self.deep_weight = config.loss_deep_supervision
        self.aux_proj = nn.Dense(config.decoder_dim, config.decoder_dim)
        # auto_prefix=False would leave it the bare names weight / bias in checkpoints.
        self.aux_proj.update_parameters_name("aux_proj.")

    def pretrained_encoders(self):
        """The network's pretrained encoder Cells; `aux_proj` is new, like the decoder."""
        return self.network.pretrained_encoders()

    def mask_losses(self, low_res_mask, weights, proposals, gt_mask, coverage):
        """The weighted BCE + Dice of M at the input size and the proposal and selection losses of one
        decoder layer's outputs -> total, bce, dice, proposal (matched + selection, unweighted)"""
        logits = self.network.upsample(low_res_mask).astype(ms.float32)
        bce = bce_with_logits(logits, gt_mask)
        dice = dice_loss(logits, gt_mask)
        total = self.bce_weight * bce + self.dice_weight * dice
        proposal = ops.zeros((), ms.float32)
        proposals = proposals.astype(ms.float32)
        if self.proposal_weight > 0:
            proposal = matched_proposal_loss(proposals, coverage)
            total = total + self.proposal_weight * proposal
        if self.selection_weight > 0:
            selection = selection_loss(weights.astype(ms.float32), proposals, coverage)
            proposal = proposal + selection
            total = total + self.selection_weight * selection
        return total, bce, dice, proposal

    def construct(self, image, input_ids, attention_mask, gt_mask):
        outputs = self.network.forward_train(image, input_ids, attention_mask, self.deep_weight > 0)
        sentence, pixel_embed = outputs["sentence"], outputs["pixel_embed"]
        gt_mask = gt_mask.astype(ms.float32)
        coverage = mask_coverage(gt_mask, pixel_embed.shape[2:])
        total, bce, dice, proposal = self.mask_losses(outputs["low_res_mask"], outputs["weights"],
                                                      outputs["proposals"], gt_mask, coverage)
        # The contrast needs a hard split: a cell is foreground when the object covers at least half of it.
        foreground = (coverage >= 0.5).astype(ms.float32)
        aux = foreground_contrast_loss(pixel_embed.astype(ms.float32), self.aux_proj(sentence.astype(ms.float32)),
                                       foreground, self.temperature)
        total = total + self.aux_weight * aux
        for layer_mask, layer_weights, layer_proposals in outputs["earlier_layers"]:
            total = total + self.deep_weight * self.mask_losses(layer_mask, layer_weights, layer_proposals,
                                                                gt_mask, coverage)[0]
        return total, bce, dice, aux, proposal
