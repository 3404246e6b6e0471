"""Tiny random-weight models built on the fly, saved with save_pretrained, so tests exercise the same
Auto*.from_pretrained loading code as the real models in a fraction of a second."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Human preferences help train a reward model for reinforcement learning.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea, the wind and the sky.",
    "Answer the question politely and helpfully, with clear and accurate facts.",
    "def add(a, b): return a + b  # numbers 0 1 2 3 4 5 6 7 8 9",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="<|im_end|>", unk_token="<unk>", chat_template=CHAT_TEMPLATE)


def tiny_causal_lm(folder: str | Path, seed: int = 0, layers: int = 2) -> Path:
    """A 32-wide Llama of `layers` layers with a ChatML tokenizer, saved to `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    folder = Path(folder)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_encoder(folder: str | Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT (sequence classification, one label) with its tokenizer, saved to `folder`."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tok = build_tokenizer()
    tok.cls_token, tok.sep_token = "<s>", "</s>"
    config = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=512, num_labels=1,
                        pad_token_id=tok.pad_token_id)
    folder = Path(folder)
    BertForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
