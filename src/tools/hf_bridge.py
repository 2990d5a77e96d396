"""Hugging Face transformers <-> our Swin and BERT: parameter names, HF torch models with our weights.

Used by the benchmark (PyTorch side, parity check) and by the converter tests (HF models as references).
torch and transformers are imported inside the functions that need them: they are optional dependencies.
"""
import math

import numpy as np

from .convert_bert import LAYER_RENAMES, QKV_PARTS

# Where our Swin block modules live in transformers' SwinModel, in the 5.x and in the 4.x naming.
HF_SWIN_NAMINGS = (
    {"qkv": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
     "attn.proj": "attention.o_proj",
     "table": "attention.relative_position_bias.relative_position_bias_table",
     "norm1": "layernorm_before", "norm2": "layernorm_after", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"},
    {"qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
     "attn.proj": "attention.output.dense",
     "table": "attention.self.relative_position_bias_table",
     "norm1": "layernorm_before", "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense",
     "mlp.fc2": "output.dense"},
)
TABLE = "relative_position_bias_table"
# Swin modules outside the blocks: ours (official) -> HF.
HF_SWIN_OUTER = {"patch_embed.proj": "embeddings.patch_embeddings.projection", "patch_embed.norm": "embeddings.norm",
                 "norm": "layernorm"}
# Our BERT layer modules -> HF (the converter's HF -> ours map, reversed).
BERT_LAYER_MODULES = {ours: hf for hf, ours in LAYER_RENAMES.items()}
BERT_QKV = tuple(f"attention.self.{part}" for part in QKV_PARTS)
# HF parameters and buffers our encoders have no counterpart for (left at their initial values).
HF_ALLOWED_MISSING = ("layernorm.weight", "layernorm.bias", "relative_position_index", "position_ids",
                      "token_type_ids")


def torch_suffix(suffix):
    """MindSpore LayerNorm gamma/beta -> weight/bias."""
    return {"gamma": "weight", "beta": "bias"}.get(suffix, suffix)


# ----------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------

def hf_swin_keys(name, naming):
    """HF SwinModel key(s) of one of our Swin parameter names (three for the fused qkv)."""
    module, suffix = name.rsplit(".", 1)
    suffix = torch_suffix(suffix)
    if module in HF_SWIN_OUTER:
        return [f"{HF_SWIN_OUTER[module]}.{suffix}"]
    parts = name.split(".")
    if parts[0] != "layers":
        raise KeyError(f"no transformers counterpart for Swin parameter {name}")
    if parts[2] == "downsample":
        return [f"encoder.{module}.{suffix}"]
    block = ".".join(parts[:4])
    inner = ".".join(parts[4:-1])
    if parts[-1] == TABLE:
        return [f"encoder.{block}.{naming['table']}"]
    if inner == "attn.qkv":
        return [f"encoder.{block}.{part}.{suffix}" for part in naming["qkv"]]
    return [f"encoder.{block}.{naming[inner]}.{suffix}"]


def official_swin_key(key, naming):
    """Official Swin key of an HF SwinModel key (the query of q/k/v stands for the fused qkv)."""
    module, suffix = key.rsplit(".", 1)
    outer = {hf: ours for ours, hf in HF_SWIN_OUTER.items()}
    if module in outer:
        return f"{outer[module]}.{suffix}"
    parts = key.split(".")
    if parts[3] == "downsample":
        return key[len("encoder."):]
    block = ".".join(parts[1:5])
    if suffix == TABLE:
        return f"{block}.attn.{TABLE}"
    inner = {hf: ours for ours, hf in naming.items() if ours not in ("qkv", "table")}
    inner[naming["qkv"][0]] = "attn.qkv"
    return f"{block}.{inner[module[len('encoder.') + len(block) + 1:]]}.{suffix}"


def swin_naming_of(keys):
    """The entry of HF_SWIN_NAMINGS that HF SwinModel keys `keys` use."""
    for naming in HF_SWIN_NAMINGS:
        if f"encoder.layers.0.blocks.0.{naming['qkv'][0]}.weight" in keys:
            return naming
    raise RuntimeError("this transformers version names SwinModel parameters in a way not known here")


def hf_swin_to_official(state_dict):
    """HF SwinModel state dict -> official Swin naming with a fused qkv (numpy arrays)."""
    naming = swin_naming_of(state_dict)
    query, *others = naming["qkv"]
    official = {}
    for key, tensor in state_dict.items():
        if key.endswith("relative_position_index") or any(f".{part}." in key for part in others):
            continue  # a buffer, or folded into qkv with the query
        if f".{query}." in key:
            pieces = [state_dict[key.replace(query, part)].numpy() for part in naming["qkv"]]
            official[official_swin_key(key, naming)] = np.concatenate(pieces, axis=0)
        else:
            official[official_swin_key(key, naming)] = tensor.numpy().copy()
    return official


def hf_bert_keys(name):
    """HF BertModel key(s) of one of our BERT parameter names (three for the fused qkv)."""
    module, suffix = name.rsplit(".", 1)
    suffix = "weight" if suffix == "embedding_table" else torch_suffix(suffix)
    if module.startswith("embeddings."):
        return [f"{module}.{suffix}"]
    parts = module.split(".")
    layer, inner = parts[1], ".".join(parts[2:])
    if inner == "attention.qkv":
        return [f"encoder.layer.{layer}.{part}.{suffix}" for part in BERT_QKV]
    return [f"encoder.layer.{layer}.{BERT_LAYER_MODULES[inner]}.{suffix}"]


def random_hf_bert_state(rng, hidden=8, layers=2, vocab=11, ffn=16):
    """Random HF-named BERT state dict (numpy float32), with pooler, and the position_ids buffer."""
    state = {"embeddings.word_embeddings.weight": rng.randn(vocab, hidden),
             "embeddings.position_embeddings.weight": rng.randn(16, hidden),
             "embeddings.token_type_embeddings.weight": rng.randn(2, hidden),
             "embeddings.LayerNorm.weight": rng.randn(hidden), "embeddings.LayerNorm.bias": rng.randn(hidden),
             "embeddings.position_ids": np.arange(16)[None],
             "pooler.dense.weight": rng.randn(hidden, hidden), "pooler.dense.bias": rng.randn(hidden)}
    shapes = {"intermediate": (ffn, hidden), "output": (hidden, ffn)}
    linears = [(hf, (hidden, hidden)) for hf in BERT_QKV]
    linears += [(hf, shapes.get(ours, (hidden, hidden))) for ours, hf in BERT_LAYER_MODULES.items()
                if not ours.endswith("_norm")]
    norms = [hf for ours, hf in BERT_LAYER_MODULES.items() if ours.endswith("_norm")]
    for index in range(layers):
        prefix = f"encoder.layer.{index}."
        for module, shape in linears:
            state[prefix + module + ".weight"] = rng.randn(*shape)
            state[prefix + module + ".bias"] = rng.randn(shape[0])
        for norm in norms:
            state[prefix + norm + ".weight"] = rng.randn(hidden)
            state[prefix + norm + ".bias"] = rng.randn(hidden)
    return {key: value.astype(np.float32) if value.dtype.kind == "f" else value for key, value in state.items()}


# ----------------------------------------------------------------------------------------------
# Random weights (MindSpore and torch alike), so that a parity check can fail
# ----------------------------------------------------------------------------------------------

def scaled_noise(name, noise):
    """Standard normal `noise` for parameter `name` -> a value that keeps a deep network's activations
    moderate: tables as drawn, norm scales near 1, biases small, matrices scaled by 1/sqrt(fan-in)."""
    if name.endswith(TABLE):
        return noise
    if len(noise.shape) == 1:
        return noise * 0.1 + (1.0 if name.endswith(("gamma", "weight")) else 0.0)
    return noise * (0.5 / math.sqrt(int(np.prod(noise.shape[1:]))))


def randomise_mindspore(net, seed):
    """Random values for every parameter of a MindSpore Cell (norms and position tables included)."""
    import mindspore as ms
    rng = np.random.default_rng(seed)
    for name, param in net.parameters_and_names():
        noise = rng.standard_normal(tuple(param.shape), dtype=np.float32)
        param.set_data(ms.Tensor(scaled_noise(name, noise).astype(np.float32)))


def randomise_torch(model, seed):
    """Random values for every parameter of a torch module (norms and position tables included)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(scaled_noise(name, torch.randn(param.shape, generator=generator)))


# ----------------------------------------------------------------------------------------------
# HF torch models
# ----------------------------------------------------------------------------------------------

def stage_sides(image_size, patch_size, stages):
    """Side of each Swin stage's token grid (patch merging rounds odd sides up)."""
    side, sides = image_size // patch_size, []
    for _ in range(stages):
        sides.append(side)
        side = (side + 1) // 2
    return sides


def shrink_hf_windows(model):
    """Gives blocks whose stage is not larger than the window a table of the shrunk window.

    The official Swin (and transformers 4.x) build those tables for the shrunk window; transformers
    5.x sizes them for config.window_size and then fails in the forward pass. Older versions need nothing.
    """
    try:
        from transformers.models.swin.modeling_swin import SwinRelativePositionBias
    except ImportError:
        return
    config = model.config
    sides = stage_sides(config.image_size, config.patch_size, len(config.depths))
    for stage, side, heads in zip(model.encoder.layers, sides, config.num_heads):
        if side > config.window_size:
            continue
        for block in stage.blocks:
            if hasattr(block.attention, "relative_position_bias"):
                block.attention.relative_position_bias = SwinRelativePositionBias(heads, (side, side))


def hf_swin(image_size, embed_dim, depths, num_heads, window_size, patch_size=4, mlp_ratio=4.0):
    """transformers.SwinModel (no pooler, no dropout, windows shrunk like ours) with its initial weights."""
    import transformers
    config = transformers.SwinConfig(
        image_size=image_size, patch_size=patch_size, num_channels=3, embed_dim=embed_dim, depths=list(depths),
        num_heads=list(num_heads), window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=True,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0, hidden_act="gelu",
        use_absolute_embeddings=False, layer_norm_eps=1e-5)
    model = transformers.SwinModel(config, add_pooling_layer=False)
    shrink_hf_windows(model)
    return model


def torch_state_from_ours(net, key_function):
    """{HF key: torch tensor} from our Cell's parameters; a fused qkv is split in three along axis 0."""
    import torch
    state = {}
    for name, param in net.parameters_and_names():
        array = param.asnumpy().copy()
        keys = key_function(name)
        pieces = np.split(array, len(keys), axis=0) if len(keys) > 1 else [array]
        for key, piece in zip(keys, pieces):
            state[key] = torch.from_numpy(np.ascontiguousarray(piece))
    return state


def load_into_torch(model, state):
    """Loads {HF key: tensor}; every HF parameter must be covered but the allowed leftovers."""
    result = model.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith(HF_ALLOWED_MISSING)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"weight transfer to transformers incomplete: missing {missing[:5]}, "
                           f"unexpected {list(result.unexpected_keys)[:5]}")


def hf_swin_from_ours(config, our_swin):
    """transformers SwinModel of our Swin's architecture (config keys swin_*), carrying its weights, eval."""
    model = hf_swin(config.image_size, config.swin_embed_dim, config.swin_depths, config.swin_num_heads,
                    config.swin_window_size, config.swin_patch_size, config.swin_mlp_ratio)
    naming = swin_naming_of(model.state_dict())
    load_into_torch(model, torch_state_from_ours(our_swin, lambda name: hf_swin_keys(name, naming)))
    return model.eval()


def hf_bert_from_ours(config, our_bert):
    """transformers BertModel (no pooler) of our BERT's architecture and weights, in eval mode."""
    import transformers
    hf_config = transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.bert_hidden_size,
        num_hidden_layers=config.bert_num_layers, num_attention_heads=config.bert_num_heads,
        intermediate_size=config.bert_intermediate_size,
        max_position_embeddings=config.bert_max_position_embeddings,
        type_vocab_size=config.bert_type_vocab_size, layer_norm_eps=config.bert_layer_norm_eps,
        hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.BertModel(hf_config, add_pooling_layer=False)
    load_into_torch(model, torch_state_from_ours(our_bert, hf_bert_keys))
    return model.eval()


def hf_swin_stage_maps(model, image):
    """The four stage maps before patch merging (B, C_i, H_i, W_i) of a torch image, as our Swin returns them."""
    output = model(image, output_hidden_states=True, output_hidden_states_before_downsampling=True)
    return output.reshaped_hidden_states[1:]


def hf_bert_words(model, input_ids, attention_mask):
    """Last hidden state (B, T, H) of an HF BertModel."""
    return model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def hf_bert_pretrained_words(model_dir, input_ids, attention_mask):
    """Last hidden state (B, T, H) numpy of the HF BertModel saved in `model_dir`, for int ids and mask."""
    import torch
    import transformers
    model = transformers.BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    with torch.no_grad():
        output = hf_bert_words(model, torch.from_numpy(input_ids).long(), torch.from_numpy(attention_mask).long())
    return output.numpy()
