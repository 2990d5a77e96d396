"""BERT converter: parity with Hugging Face transformers on the real all-MiniLM-L6-v2 weights."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mindspore as ms

from model_utils.config import get_config
from src.models.bert import BertModel
from src.checkpoint import load_pretrained
from src.commands.train import build_network
from src.tools import hf_bridge
from src.tools.convert_bert import convert_bert_state_dict, infer_architecture, normalise_names

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CONFIG = os.path.join(ROOT, "tiny_config.yaml")
MAX_TOKENS = 20
TOLERANCE = 1e-4

SENTENCES = [
    "man on the left",
    "the woman in the red shirt holding an umbrella",
    "left",
    "giraffe closest to the camera",
    "second banana from the right",
    "a black and white cat sleeping on the laptop keyboard next to a cup of coffee and a phone",
    "blue car",
    "guy wearing glasses and a gray hoodie sitting at the far end of the table",
    "the smaller elephant",
    "bottom right sandwich half",
    "player in white swinging the bat",
    "kid",
    "the bowl of broccoli behind the plate with rice",
    "zebra facing away",
    "person partially cut off on the right edge of the picture, wearing a striped sweater",
    "top left donut with pink frosting",
    "middle chair",
    "the tallest man standing near the bus door",
    "horse",
    "white vase with red flowers on the windowsill",
]


def tokenize(vocab_file):
    """(input_ids, attention_mask) int32 (20, 20) of SENTENCES, padded / cut to MAX_TOKENS."""
    transformers = pytest.importorskip("transformers", reason="transformers is needed for the BERT reference")
    tokenizer = transformers.BertTokenizer(vocab_file, do_lower_case=True)
    encoded = tokenizer(SENTENCES, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="np")
    return encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(np.int32)


def hf_last_hidden(model_dir, input_ids, attention_mask):
    pytest.importorskip("torch", reason="torch is needed for the BERT reference")
    pytest.importorskip("transformers", reason="transformers is needed for the BERT reference")
    return hf_bridge.hf_bert_pretrained_words(model_dir, input_ids, attention_mask)


@pytest.mark.slow
def test_bert_cli_parity_on_minilm(minilm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local directory: nothing may be fetched
    input_ids, attention_mask = tokenize(os.path.join(minilm_dir, "vocab.txt"))
    lengths = attention_mask.sum(axis=1)
    assert lengths.min() <= 3 and lengths.max() == MAX_TOKENS  # short, long and cut sentences
    reference = hf_last_hidden(minilm_dir, input_ids, attention_mask)

    dst = tmp_path / "bert.ckpt"
    command = [sys.executable, "-m", "src.tools.convert_bert", "--src", minilm_dir, "--dst", str(dst)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "pooler.dense.weight" in result.stdout  # dropped and reported

    with open(os.path.join(minilm_dir, "config.json"), "r", encoding="utf-8") as handle:
        hf_config = json.load(handle)
    net = BertModel(vocab_size=hf_config["vocab_size"], hidden_size=hf_config["hidden_size"],
                    num_hidden_layers=hf_config["num_hidden_layers"],
                    num_attention_heads=hf_config["num_attention_heads"],
                    intermediate_size=hf_config["intermediate_size"], layer_norm_eps=hf_config["layer_norm_eps"])
    load_pretrained(net, str(dst), "BERT")
    net.set_train(False)
    ours = net(ms.Tensor(input_ids), ms.Tensor(attention_mask)).asnumpy()
    real = attention_mask.astype(bool)
    diff = float(np.abs(ours[real] - reference[real]).max())
    print(f"BERT max abs diff at real tokens: {diff:.2e}")
    assert diff <= TOLERANCE


def test_bert_mapping_fuses_qkv_and_reads_old_names():
    """q/k/v fused in that order; "bert." prefix, old LayerNorm gamma/beta and the MLM head handled."""
    sd = hf_bridge.random_hf_bert_state(np.random.RandomState(0))
    net = BertModel(**infer_architecture(normalise_names(sd), 2))
    params = convert_bert_state_dict(sd, net)
    qkv = params["layers.1.attention.qkv.weight"]
    np.testing.assert_array_equal(qkv[8:16], sd["encoder.layer.1.attention.self.key.weight"])
    np.testing.assert_array_equal(params["layers.0.output_norm.gamma"], sd["encoder.layer.0.output.LayerNorm.weight"])
    np.testing.assert_array_equal(params["embeddings.word_embeddings.embedding_table"],
                                  sd["embeddings.word_embeddings.weight"])

    old = {"bert." + key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"):
           value for key, value in sd.items()}
    old["cls.predictions.bias"] = np.zeros(11, np.float32)
    old_params = convert_bert_state_dict(old, net)
    assert sorted(old_params) == sorted(params)
    for name, value in params.items():
        np.testing.assert_array_equal(old_params[name], value)


class CoupledWords(ms.nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, image, input_ids, attention_mask):
        return self.net.encode(image, input_ids, attention_mask)[1]


def minilm_coupled_config(pretrained_bert):
    """Tiny vision, MiniLM's text sizes (6 layers: 2, 2, 1, 1 per stage), converted weights as train.py takes them."""
    return get_config([], TINY_CONFIG, overrides={
        "vocab_size": 30522, "bert_hidden_size": 384, "bert_num_layers": 6, "bert_stage_layers": [2, 2, 1, 1],
        "bert_num_heads": 12, "bert_intermediate_size": 1536, "bert_max_position_embeddings": 512,
        "pretrained_bert": pretrained_bert})


@pytest.mark.slow
def test_coupled_minilm_words_match_transformers_at_init(minilm_dir, tmp_path, monkeypatch):
    """Converted MiniLM loaded by train.py's build_network into a CoupAlign whose 6 layers run 2, 2, 1, 1 before
    the WPAs: with the gates closed at init, the words after the last WPA are transformers' last hidden state."""
    from src.tools import convert_bert
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    input_ids, attention_mask = tokenize(os.path.join(minilm_dir, "vocab.txt"))
    reference = hf_last_hidden(minilm_dir, input_ids, attention_mask)
    dst = str(tmp_path / "minilm.ckpt")
    convert_bert.main(["--src", minilm_dir, "--dst", dst])

    ms.set_seed(4)
    config = minilm_coupled_config(dst)
    net = build_network(config)
    net.set_train(False)
    assert net.bert_blocks == [(0, 2), (2, 4), (4, 5), (5, 6)]
    image = np.random.default_rng(0).standard_normal((len(SENTENCES), 3, config.image_size, config.image_size))
    ours = CoupledWords(net)(ms.Tensor(image.astype(np.float32)), ms.Tensor(input_ids),
                             ms.Tensor(attention_mask)).asnumpy()
    real = attention_mask.astype(bool)
    diff = float(np.abs(ours[real] - reference[real]).max())
    print(f"coupled MiniLM max abs diff at real tokens: {diff:.2e}")
    assert diff <= TOLERANCE
