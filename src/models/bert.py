"""BERT text encoder as MindSpore Cells, runnable whole or block by block."""
import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops

from .layers import DenseGelu, layer_norm


class BertEmbeddings(nn.Cell):
    """Word + position + token-type embeddings, LayerNorm, dropout. (B, T) -> (B, T, H)"""

    def __init__(self, vocab_size, hidden_size, max_position_embeddings, type_vocab_size, eps, dropout,
                 cpu_kernels=True):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden_size)
        self.LayerNorm = layer_norm(hidden_size, eps, cpu_kernels)
        self.dropout = nn.Dropout(p=dropout)

    def construct(self, input_ids):
        length = input_ids.shape[1]
        positions = ops.arange(length, dtype=ms.int32).reshape(1, length)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        # Single-segment input: every token has type 0.
        x = x + self.token_type_embeddings.embedding_table[0]
        return self.dropout(self.LayerNorm(x))

    def no_weight_decay(self):
        return {"position_embeddings.embedding_table"}


class BertSelfAttention(nn.Cell):
    """Fused-QKV multi-head self-attention with an additive key mask. (B, T, H) -> (B, T, H)"""

    def __init__(self, hidden_size, num_heads, dropout):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Dense(hidden_size, 3 * hidden_size)
        self.attn_drop = nn.Dropout(p=dropout)
        self.matmul_qk = ops.BatchMatMul(transpose_b=True)

    def _heads(self, x):
        """(B, T, H) -> (B, heads, T, head_dim)"""
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def construct(self, x, mask_bias):
        batch, length, hidden = x.shape
        q, k, v = ops.split(self.qkv(x), hidden, axis=-1)
        q, k, v = self._heads(q * self.scale), self._heads(k), self._heads(v)
        scores = self.matmul_qk(q, k) + mask_bias.astype(q.dtype)
        attn = self.attn_drop(ops.softmax(scores.astype(ms.float32), axis=-1).astype(v.dtype))
        return ops.matmul(attn, v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)


class BertLayer(nn.Cell):
    """Post-norm transformer layer: attention and feed-forward. (B, T, H) -> (B, T, H)"""

    def __init__(self, hidden_size, num_heads, intermediate_size, eps, dropout, cpu_kernels=True):
        super().__init__()
        self.attention = BertSelfAttention(hidden_size, num_heads, dropout)
        self.attention_output = nn.Dense(hidden_size, hidden_size)
        self.attention_norm = layer_norm(hidden_size, eps, cpu_kernels)
        self.intermediate = DenseGelu(hidden_size, intermediate_size, cpu_kernels)
        self.output = nn.Dense(intermediate_size, hidden_size)
        self.output_norm = layer_norm(hidden_size, eps, cpu_kernels)
        self.dropout = nn.Dropout(p=dropout)

    def construct(self, x, mask_bias):
        attended = self.dropout(self.attention_output(self.attention(x, mask_bias)))
        x = self.attention_norm(x + attended)
        return self.output_norm(x + self.dropout(self.output(self.intermediate(x))))


class BertModel(nn.Cell):
    """BERT encoder without pooler. (B, T) ids, (B, T) mask -> (B, T, H)"""

    def __init__(self, vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
                 max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, dropout=0.1, cpu_kernels=True):
        super().__init__()
        self.num_hidden_layers = num_hidden_layers
        self.embeddings = BertEmbeddings(vocab_size, hidden_size, max_position_embeddings, type_vocab_size,
                                         layer_norm_eps, dropout, cpu_kernels)
        self.layers = nn.CellList([
            BertLayer(hidden_size, num_attention_heads, intermediate_size, layer_norm_eps, dropout, cpu_kernels)
            for _ in range(num_hidden_layers)])

    @staticmethod
    def config_arguments(config, **overrides):
        """Constructor arguments from the config's vocab_size / bert_* keys; `overrides` (None = keep) replace them."""
        arguments = {
            "vocab_size": config.vocab_size, "hidden_size": config.bert_hidden_size,
            "num_hidden_layers": config.bert_num_layers, "num_attention_heads": config.bert_num_heads,
            "intermediate_size": config.bert_intermediate_size,
            "max_position_embeddings": config.bert_max_position_embeddings,
            "type_vocab_size": config.bert_type_vocab_size, "layer_norm_eps": config.bert_layer_norm_eps,
            "dropout": config.bert_dropout,
        }
        arguments.update({key: value for key, value in overrides.items() if value is not None})
        return arguments

    @classmethod
    def from_config(cls, config, cpu_kernels=None, **overrides):
        """The BERT a config describes; `cpu_kernels` None means config.cpu_kernels."""
        cpu_kernels = config.cpu_kernels if cpu_kernels is None else cpu_kernels
        return cls(**cls.config_arguments(config, **overrides), cpu_kernels=cpu_kernels)

    @staticmethod
    def mask_bias(attention_mask):
        """(B, T) 1/0 mask -> (B, 1, 1, T) additive bias, -10000 at padding."""
        bias = (1.0 - attention_mask.astype(ms.float32)) * -10000.0
        return bias.reshape(attention_mask.shape[0], 1, 1, attention_mask.shape[1])

    def forward_layers(self, x, mask_bias, start, end):
        """Run layers [start, end). (B, T, H) -> (B, T, H)"""
        for index in range(start, end):
            x = self.layers[index](x, mask_bias)
        return x

    def construct(self, input_ids, attention_mask):
        x = self.embeddings(input_ids)
        return self.forward_layers(x, self.mask_bias(attention_mask), 0, self.num_hidden_layers)
