"""Grouped-query attention without copying the key/value cache, for the transformers engine.

Most current models (SmolLM2-135M: 9 query heads, 3 key/value heads) give several query heads one
key/value head. transformers' `sdpa` attention repeats each key/value head for its query heads
(`repeat_kv`: a copy of the layer's whole cache, at every decoding step) whenever there is an
attention mask, and batched generation with left padding always has one; only without a mask does it
let torch take the groups as they are. torch's `scaled_dot_product_attention(..., enable_gqa=True)`
takes a mask too and gives the same output.

`use(model)` registers `charter_sdpa` — transformers' SDPA attention with that one change, and
transformers' own SDPA mask for it — and switches a model that runs `sdpa` to it. It changes the CPU
only, where it was measured: on CUDA, torch's SDPA with grouped heads and a mask falls back to its
math kernel, which is why transformers copies there. Every case this does not cover (another device,
no groups, a position bias, a paged cache, a static cache's causal prefill) goes to transformers' own
function unchanged. Measured in docs/inference.md ("Grouped-query attention").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

NAME = "charter_sdpa"


def _gqa_sdpa(
    sdpa: Callable[..., Any], transformers_sdpa: Callable[..., Any]
) -> Callable[..., tuple[Any, None]]:
    """transformers' `sdpa_attention_forward` (`transformers_sdpa`), with torch's `sdpa` given
    `enable_gqa=True` instead of `repeat_kv` when a mask is given. Both are resolved once, at
    registration, not at every layer and step."""

    def gqa_sdpa(
        module: Any,
        query: Any,
        key: Any,
        value: Any,
        attention_mask: Any,
        dropout: float = 0.0,
        scaling: float | None = None,
        is_causal: bool | None = None,
        **kwargs: Any,
    ) -> tuple[Any, None]:
        """Query [batch, heads, q, dim]; key and value [batch, kv_heads, kv, dim]."""
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        causal = bool(query.shape[2] > 1 and attention_mask is None and causal)
        if (
            query.device.type != "cpu"  # CUDA: a mask with grouped heads falls back to SDPA's math kernel
            or getattr(module, "num_key_value_groups", 1) == 1
            or kwargs.get("position_bias") is not None
            or kwargs.get("cache") is not None
            or kwargs.get("output_attentions", False)
            or key.shape[-1] != value.shape[-1]
            or (causal and key.shape[2] > query.shape[2])  # a static cache's prefill: transformers slices it
        ):
            out: tuple[Any, None] = transformers_sdpa(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                is_causal=is_causal, **kwargs,
            )  # fmt: skip
            return out
        attn = sdpa(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=causal,
            enable_gqa=True,
        )  # fmt: skip
        return attn.transpose(1, 2).contiguous(), None

    return gqa_sdpa


def use(model: Any) -> str:
    """Registers `charter_sdpa` and switches `model` to it if it runs transformers' `sdpa`; returns the
    attention the model runs afterwards."""
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(
        NAME, _gqa_sdpa(torch.nn.functional.scaled_dot_product_attention, sdpa_attention_forward)
    )
    AttentionMaskInterface.register(NAME, sdpa_mask)
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(NAME)
    return str(model.config._attn_implementation)
