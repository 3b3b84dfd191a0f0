"""Tiny randomly initialised models built from configs: the mechanics tests' base models."""

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

VOCAB = 128


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    return T5ForConditionalGeneration(config).eval()


def tiny_bert(num_labels: int = 2, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


def randomize_live_task(model, std: float = 0.2) -> None:
    """Give the task being trained non-zero weights (a fresh LoRA's B is zero: a no-op)."""
    with torch.no_grad():
        for parameter in model.trainable_parameters().values():
            parameter.normal_(0.0, std)


def tiny_byte_tokenizer():
    """A byte-level tokenizer (256 bytes + specials): covers any text, needs no network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_pieces = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<pad>", "<s>", "</s>"]
    vocab = {token: index for index, token in enumerate(specials + sorted(byte_pieces))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_llama_for(tokenizer, seed: int = 0):
    """A tiny random Llama whose vocabulary fits `tokenizer`."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


class CausalLMRows(torch.utils.data.Dataset):
    """Causal-LM training rows for a stock Trainer: random tokens, loss on the last ones, one task id."""

    def __init__(self, n: int, task_id: int, seed: int = 0, length: int = 8, prompt_length: int = 5):
        self.ids = torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))
        self.task_id, self.prompt_length = task_id, prompt_length

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        labels = self.ids[index].clone()
        labels[: self.prompt_length] = -100
        return {"input_ids": self.ids[index], "attention_mask": torch.ones_like(self.ids[index]), "labels": labels,
                "task_ids": torch.tensor(self.task_id)}
