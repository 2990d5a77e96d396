"""BertModel built from the config."""
from src.models.bert import BertModel


def test_bert_from_config_matches_the_config(tiny_config):
    bert = BertModel.from_config(tiny_config)
    assert len(bert.layers) == tiny_config.bert_num_layers
    assert bert.embeddings.word_embeddings.embedding_table.shape == (tiny_config.vocab_size,
                                                                     tiny_config.bert_hidden_size)
