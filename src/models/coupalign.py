"""CoupAlign: Swin + BERT coupled by Word-Pixel Alignment, a mask generator and Sentence-Mask Alignment."""
import numpy as np
import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor

from .bert import BertModel
from .exportable import MatmulBilinearResize, exportable_formulations, exportable_formulations_active
from .layers import broadcast_as
from .mask_generator import MaskGenerator
from .swin import SwinTransformer
from .wpa import WordPixelAlignment


class ProposalGeometry(nn.Cell):
    """Where each proposal lies, from its mask sigmoid(Y_n) without gradient: centroid x and y, spread along x
    and y, and area (coordinates in [-1, 1]). Y_N (B, N, h, w) -> (B, N, 5)"""

    def __init__(self, resolution):
        super().__init__()
        height, width = resolution
        rows, columns = np.meshgrid(np.linspace(-1.0, 1.0, height), np.linspace(-1.0, 1.0, width), indexing="ij")
        self.coords = Tensor(np.stack([columns.reshape(-1), rows.reshape(-1)])[None, None], ms.float32)
        self.num_cells = height * width

    def construct(self, proposals):
        batch, count = proposals.shape[0], proposals.shape[1]
        probs = ops.sigmoid(proposals.astype(ms.float32)).reshape(batch, count, 1, -1)
        coords = ops.broadcast_to(self.coords, (batch, count, 2, self.num_cells))
        probs = broadcast_as(probs, coords)
        mass = probs.sum(axis=-1)
        safe_mass = ops.maximum(mass, 1e-6)
        centre = (probs * coords).sum(axis=-1) / safe_mass
        second = (probs * coords * coords).sum(axis=-1) / safe_mass
        spread = ops.sqrt(ops.maximum(second - centre * centre, 0.0))
        area = mass[:, :, :1] / self.num_cells
        # Describes the masks for SMA's choice; SMA's losses must not reshape them (nor meet sqrt's slope at 0).
        return ops.stop_gradient(ops.concat((centre, spread, area), axis=-1))


class SentenceMaskAlignment(nn.Cell):
    """Weights the N proposals by their agreement with the sentence.

    Q_o (B, N, C), L_g (B, C), Y_N (B, N, h, w) -> M (B, 1, h, w), weights (B, N)

    With `resolution` (h, w) of the proposals, each query is first told where its mask lies (ProposalGeometry
    through a small MLP): the queries themselves do not know it, as cross-attention returns the memory
    without its position encoding, so "the left one" could not be told from "the right one".
    """

    def __init__(self, dim, resolution=None):
        super().__init__()
        # No bias: <b, L_g> is the same for every proposal, so softmax ignores it and its gradient is rounding
        # noise, which Adam turns into lr-sized random steps (a resumed run then drifts from a straight one).
        self.query_proj = nn.Dense(dim, dim, has_bias=False)
        self.scale = dim ** -0.5
        self.geometry = None
        if resolution is not None:
            self.geometry = ProposalGeometry(resolution)
            # Zero last layer: at step 0 the weights are those without geometry. No bias there, for the
            # reason query_proj has none: it would add the same score to every proposal.
            self.geometry_embed = nn.SequentialCell([nn.Dense(5, dim), nn.ReLU(),
                                                     nn.Dense(dim, dim, weight_init="zeros", has_bias=False)])

    def construct(self, mask_queries, sentence, proposals):
        if self.geometry is not None:
            mask_queries = mask_queries + self.geometry_embed(self.geometry(proposals)).astype(mask_queries.dtype)
        scores = (self.query_proj(mask_queries) * sentence[:, None, :]).sum(axis=-1) * self.scale
        weights = ops.softmax(scores.astype(ms.float32), axis=-1).astype(proposals.dtype)
        mask = (weights[:, :, None, None] * proposals).sum(axis=1, keepdims=True)
        return mask, weights


class SentencePool(nn.Cell):
    """Sentence feature from word features: mean over real tokens or [CLS]. (B, T, H), (B, T) -> (B, H)"""

    def __init__(self, mode):
        super().__init__()
        if mode not in ("mean", "cls"):
            raise ValueError(f"sentence_pool must be 'mean' or 'cls', got '{mode}'")
        self.use_cls = mode == "cls"

    def construct(self, words, word_mask):
        if self.use_cls:
            return words[:, 0]
        weights = word_mask.astype(words.dtype)[:, :, None]
        return (words * weights).sum(axis=1) / ops.maximum(weights.sum(axis=1), 1.0)


def _check_stage_layers(stage_layers, num_layers, num_stages):
    counts = list(stage_layers)
    if len(counts) != num_stages:
        raise ValueError(f"bert_stage_layers {counts} must give one count per Swin stage ({num_stages}), "
                         f"got {len(counts)}")
    if not all(isinstance(count, int) and not isinstance(count, bool) and count >= 0 for count in counts):
        raise ValueError(f"bert_stage_layers {counts} must be non-negative integers")
    if sum(counts) != num_layers:
        raise ValueError(f"bert_stage_layers {counts} must sum to bert_num_layers ({num_layers}), "
                         f"got {sum(counts)}")
    return counts


def _even_stage_layers(num_layers, num_stages):
    if num_layers % num_stages:
        raise ValueError(f"bert_num_layers={num_layers} cannot be split evenly over {num_stages} stages: "
                         f"give the layers per stage with bert_stage_layers (one count per stage, "
                         f"summing to {num_layers})")
    return [num_layers // num_stages] * num_stages


def _stage_split(num_layers, num_stages, stage_layers=()):
    """[start, end) of the BERT layers run before each stage's WPA: `stage_layers` counts per stage,
    or (empty) an even split."""
    if stage_layers:
        counts = _check_stage_layers(stage_layers, num_layers, num_stages)
    else:
        counts = _even_stage_layers(num_layers, num_stages)
    ends = [sum(counts[:stage + 1]) for stage in range(num_stages)]
    return [(end - count, end) for count, end in zip(counts, ends)]


class CoupAlign(nn.Cell):
    """(B, 3, S, S) image, (B, T) ids, (B, T) mask -> (B, 1, S, S) mask logits

    `swin` and `bert` are the (pretrained) encoders; the fusion and decoder Cells are built here from
    their widths and resolutions.
    """

    def __init__(self, swin, bert, decoder_dim=256, num_queries=16, wpa_heads=1, wpa_dropout=0.0,
                 wpa_position_dim=64, sentence_pool="mean", dec_layers=6, dec_heads=8, dec_ffn_dim=1024,
                 gn_groups=32, dec_dropout=0.0, cpu_kernels=True, bert_stage_layers=(), wpa_lang_to_vision=True,
                 wpa_vision_to_lang=True, sma_geometry=True):
        super().__init__()
        self.swin = swin
        self.bert = bert
        self.num_stages = swin.num_stages
        self.bert_blocks = _stage_split(bert.num_hidden_layers, self.num_stages, bert_stage_layers)
        hidden = bert.embeddings.word_embeddings.embedding_size
        self.wpa = nn.CellList([
            WordPixelAlignment(vis_dim, hidden, wpa_heads, wpa_dropout, resolution, wpa_position_dim, cpu_kernels,
                               lang_to_vis=wpa_lang_to_vision, vis_to_lang=wpa_vision_to_lang)
            for vis_dim, resolution in zip(swin.dims, swin.resolutions)])
        self.sentence_pool = SentencePool(sentence_pool)
        self.sentence_proj = nn.Dense(hidden, decoder_dim)
        self.mask_generator = MaskGenerator(swin.dims, swin.resolutions, decoder_dim, num_queries, dec_layers,
                                            dec_heads, dec_ffn_dim, gn_groups, dec_dropout, cpu_kernels)
        self.sma = SentenceMaskAlignment(decoder_dim, swin.resolutions[0] if sma_geometry else None)
        # The logits come back at the input size: patch size x the first stage's grid.
        self.image_size = swin.patch_embed.patch_size * swin.resolutions[0][0]
        self.exportable_upsample = None
        if exportable_formulations_active():
            self.exportable_upsample = MatmulBilinearResize(swin.resolutions[0], (self.image_size, self.image_size))

    @classmethod
    def from_config(cls, config, cpu_kernels=None, exportable=False):
        """The network a config describes; `cpu_kernels` (default: config.cpu_kernels) picks the compiled CPU
        kernels. `exportable` builds it from ONNX-exportable formulations (see models.exportable), without
        the compiled kernels; its parameters and checkpoints are those of the usual network."""
        if exportable:
            with exportable_formulations():
                return cls.from_config(config, cpu_kernels=False)
        cpu_kernels = config.cpu_kernels if cpu_kernels is None else cpu_kernels
        swin = SwinTransformer.from_config(config, cpu_kernels=cpu_kernels)
        swin.set_recompute(config.recompute_swin_stages)
        bert = BertModel.from_config(config, cpu_kernels=cpu_kernels)
        return cls(swin, bert, decoder_dim=config.decoder_dim, num_queries=config.num_queries,
                   wpa_heads=config.wpa_heads, wpa_dropout=config.wpa_dropout,
                   wpa_position_dim=config.wpa_position_dim, sentence_pool=config.sentence_pool,
                   dec_layers=config.dec_layers, dec_heads=config.dec_heads, dec_ffn_dim=config.dec_ffn_dim,
                   gn_groups=config.gn_groups, dec_dropout=config.dec_dropout, cpu_kernels=cpu_kernels,
                   bert_stage_layers=config.bert_stage_layers, wpa_lang_to_vision=config.wpa_lang_to_vision,
                   wpa_vision_to_lang=config.wpa_vision_to_lang, sma_geometry=config.sma_geometry)

    def pretrained_encoders(self):
        """The Cells whose weights come from converted checkpoints; the optimizer gives every other
        parameter the `new_param_lr_mult` learning rate."""
        return self.swin, self.bert

    def encode(self, image, input_ids, attention_mask):
        """Coupled encoders -> 4 fused maps S_i (B, C_i, H_i, W_i), final words (B, T, H)."""
        pixels = self.swin.patch_embed(image)
        words = self.bert.embeddings(input_ids)
        mask_bias = self.bert.mask_bias(attention_mask)
        fused = ()
        for index in range(self.num_stages):
            stage = self.swin.layers[index]
            start, end = self.bert_blocks[index]
            pixels = stage.forward_blocks(pixels)
            words = self.bert.forward_layers(words, mask_bias, start, end)
            pixels, words, fused_pixels = self.wpa[index](pixels, words, attention_mask)
            fused = fused + (self.swin.to_map(fused_pixels, index),)
            pixels = stage.forward_downsample(pixels)
        return fused, words

    def forward_train(self, image, input_ids, attention_mask, intermediate=False):
        """Every intermediate the losses may read, by name:

        fused: 4 maps S_i (B, C_i, H_i, W_i), words (B, T, H), sentence (B, C), mask_queries Q_o (B, N, C),
        proposals Y_N (B, N, h, w), pixel_embed P (B, C, h, w), weights (B, N), low_res_mask M (B, 1, h, w);
        earlier_layers: with `intermediate` (a constant), (M, weights, Y_N) after each decoder layer but the
        last, for deep supervision, else ().
        A dict, not a namedtuple: in MindSpore 2.10 graph mode a namedtuple of these outputs fails to compile
        (TupleGetItem out of range in the pixel decoder), a dict with string keys compiles, also under
        ops.value_and_grad.
        """
        fused, words = self.encode(image, input_ids, attention_mask)
        sentence = self.sentence_proj(self.sentence_pool(words, attention_mask))
        mask_queries, proposals, pixel_embed, earlier = self.mask_generator(fused, intermediate)
        low_res_mask, weights = self.sma(mask_queries, sentence, proposals)
        earlier_layers = ()
        for layer_queries, layer_proposals in earlier:
            layer_mask, layer_weights = self.sma(layer_queries, sentence, layer_proposals)
            earlier_layers = earlier_layers + ((layer_mask, layer_weights, layer_proposals),)
        return {"fused": fused, "words": words, "sentence": sentence, "mask_queries": mask_queries,
                "proposals": proposals, "pixel_embed": pixel_embed, "weights": weights, "low_res_mask": low_res_mask,
                "earlier_layers": earlier_layers}

    def upsample(self, low_res_mask):
        """(B, 1, h, w) -> (B, 1, S, S) bilinear."""
        if self.exportable_upsample is not None:
            return self.exportable_upsample(low_res_mask)
        return ops.interpolate(low_res_mask, size=(self.image_size, self.image_size), mode="bilinear",
                               align_corners=False)

    def construct(self, image, input_ids, attention_mask):
        low_res_mask = self.forward_train(image, input_ids, attention_mask)["low_res_mask"]
        return self.upsample(low_res_mask).astype(ms.float32)
