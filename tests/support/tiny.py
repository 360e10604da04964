"""Tiny Llama models built from a config (random weights) with the embedded model's tokenizer, for
real training runs that finish in seconds on one CPU thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tokenizer(embedded_model: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def llama_config(tok: Any, **overrides: Any) -> Any:
    """A tiny Llama config for `tok`'s vocabulary; `overrides` replace any field (sizes included)."""
    from transformers import LlamaConfig

    fields = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    return LlamaConfig(**(fields | overrides))


def save_tiny_lm(folder: Path, embedded_model: Path, seed: int = 0) -> Path:
    """A tiny causal LM folder (config, weights, tokenizer with its chat template) at `folder`."""
    import torch
    from transformers import LlamaForCausalLM

    tok = tokenizer(embedded_model)
    torch.manual_seed(seed)
    LlamaForCausalLM(llama_config(tok, tie_word_embeddings=True)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_tiny_reward_model(folder: Path, embedded_model: Path, seed: int = 0) -> Path:
    """A tiny one-logit sequence-classification folder, as a reward-model run leaves one."""
    import torch
    from transformers import LlamaForSequenceClassification

    tok = tokenizer(embedded_model)
    torch.manual_seed(seed)
    LlamaForSequenceClassification(llama_config(tok, num_labels=1)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
