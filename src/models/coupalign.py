"""CoupAlign: Swin + BERT coupled by Word-Pixel Alignment, a mask generator and Sentence-Mask Alignment."""
import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops

from .bert import BertModel
from .mask_generator import MaskGenerator
from .swin import SwinTransformer
from .wpa import WordPixelAlignment


class SentenceMaskAlignment(nn.Cell):
    """Weights the N proposals by their agreement with the sentence.

    Q_o (B, N, C), L_g (B, C), Y_N (B, N, h, w) -> M (B, 1, h, w), weights (B, N)
    """

    def __init__(self, dim):
        super().__init__()
        self.query_proj = nn.Dense(dim, dim)
        self.scale = dim ** -0.5

    def construct(self, mask_queries, sentence, proposals):
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


def _stage_split(num_layers, num_stages):
    if num_layers % num_stages:
        raise ValueError(f"bert_num_layers={num_layers} cannot be split evenly over {num_stages} stages")
    step = num_layers // num_stages
    return [(stage * step, (stage + 1) * step) for stage in range(num_stages)]


class CoupAlign(nn.Cell):
    """(B, 3, S, S) image, (B, T) ids, (B, T) mask -> (B, 1, S, S) mask logits"""

    def __init__(self, config, cpu_kernels=True):
        super().__init__()
        self.swin = SwinTransformer.from_config(config, cpu_kernels=cpu_kernels)
        self.bert = BertModel.from_config(config, cpu_kernels=cpu_kernels)
        self.num_stages = self.swin.num_stages
        self.bert_blocks = _stage_split(config.bert_num_layers, self.num_stages)
        hidden = config.bert_hidden_size
        dim = config.decoder_dim
        self.wpa = nn.CellList([
            WordPixelAlignment(vis_dim, hidden, config.wpa_heads, config.wpa_dropout, resolution,
                               config.wpa_position_dim, cpu_kernels)
            for vis_dim, resolution in zip(self.swin.dims, self.swin.resolutions)])
        self.sentence_pool = SentencePool(config.sentence_pool)
        self.sentence_proj = nn.Dense(hidden, dim)
        self.mask_generator = MaskGenerator(self.swin.dims, self.swin.resolutions, dim, config.num_queries,
                                            config.dec_layers, config.dec_heads, config.dec_ffn_dim,
                                            config.gn_groups, config.dec_dropout, cpu_kernels)
        self.sma = SentenceMaskAlignment(dim)
        self.image_size = config.image_size
        for stage in config.recompute_swin_stages:
            if not isinstance(stage, int) or not 1 <= stage <= self.num_stages:
                raise ValueError(f"recompute_swin_stages holds {stage!r}; Swin stages are 1 to {self.num_stages}")
            for block in self.swin.layers[stage - 1].blocks:
                block.recompute()

    @classmethod
    def from_config(cls, config, cpu_kernels=None):
        """The network a config describes; `cpu_kernels` (default: config.cpu_kernels) picks the compiled CPU kernels."""
        return cls(config, cpu_kernels=config.cpu_kernels if cpu_kernels is None else cpu_kernels)

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

    def forward_all(self, image, input_ids, attention_mask):
        """Every intermediate: maps, words, sentence (B, C), Q_o, Y_N, P, weights (B, N), M (B, 1, h, w)."""
        fused, words = self.encode(image, input_ids, attention_mask)
        sentence = self.sentence_proj(self.sentence_pool(words, attention_mask))
        mask_queries, proposals, pixel_embed = self.mask_generator(fused)
        low_res_mask, weights = self.sma(mask_queries, sentence, proposals)
        return fused, words, sentence, mask_queries, proposals, pixel_embed, weights, low_res_mask

    def upsample(self, low_res_mask):
        """(B, 1, h, w) -> (B, 1, S, S) bilinear."""
        return ops.interpolate(low_res_mask, size=(self.image_size, self.image_size), mode="bilinear",
                               align_corners=False)

    def construct(self, image, input_ids, attention_mask):
        low_res_mask = self.forward_all(image, input_ids, attention_mask)[-1]
        return self.upsample(low_res_mask).astype(ms.float32)
