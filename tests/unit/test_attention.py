"""inference.attention: on the CPU, grouped-query heads attend without `repeat_kv`'s copy of the
key/value cache, with the same logits and greedy text as transformers' `sdpa`, padding mask included;
off the CPU, transformers' own path runs."""

from __future__ import annotations

import types
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from charter.inference import attention  # noqa: E402


def tiny_llama(kv_heads: int) -> Any:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        attn_implementation="sdpa",
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def left_padded() -> tuple[Any, Any]:
    rows = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19]]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def run(model: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, int]:
    """Logits of a left-padded batch, 6 greedy tokens, and how often `repeat_kv` copied the cache."""
    from transformers.integrations import sdpa_attention

    copies = 0
    original = sdpa_attention.repeat_kv

    def counted(hidden: Any, n_rep: int) -> Any:
        nonlocal copies
        copies += n_rep > 1
        return original(hidden, n_rep)

    monkeypatch.setattr(sdpa_attention, "repeat_kv", counted)
    ids, mask = left_padded()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0
        )
    return logits, out, copies


@pytest.mark.parametrize(("kv_heads", "sdpa_copies"), [(2, True), (4, False)], ids=["grouped", "no-groups"])
def test_charter_sdpa_gives_sdpa_s_logits_and_text_without_copying_the_cache(
    monkeypatch: pytest.MonkeyPatch, kv_heads: int, sdpa_copies: bool
) -> None:
    """Grouped heads (4 query, 2 key/value): transformers' sdpa copies the cache whenever there is a
    mask, charter_sdpa never; without groups both take transformers' own path, which copies nothing."""
    model = tiny_llama(kv_heads)
    logits, text, copies = run(model, monkeypatch)
    assert (copies > 0) is sdpa_copies

    assert attention.use(model) == attention.NAME
    ours, our_text, our_copies = run(model, monkeypatch)
    assert our_copies == 0
    mask = left_padded()[1].bool()
    assert torch.allclose(ours[mask], logits[mask], atol=1e-5)
    assert torch.equal(our_text, text)


def test_a_model_on_another_attention_keeps_it() -> None:
    model = tiny_llama(kv_heads=2)
    model.set_attn_implementation("eager")
    assert attention.use(model) == "eager"


def test_on_another_device_transformers_own_path_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off the CPU (here the meta device, shapes only) charter_sdpa hands the call to transformers'
    sdpa, which copies the grouped heads (on CUDA a mask would put enable_gqa on SDPA's math kernel)."""
    from transformers.integrations import sdpa_attention
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    attention.use(tiny_llama(kv_heads=2))
    copies = []
    original = sdpa_attention.repeat_kv
    monkeypatch.setattr(sdpa_attention, "repeat_kv", lambda h, n: copies.append(n) or original(h, n))
    module = types.SimpleNamespace(num_key_value_groups=2, is_causal=True)
    query = torch.empty(3, 4, 1, 16, device="meta")
    key = value = torch.empty(3, 2, 7, 16, device="meta")
    mask = torch.ones(3, 1, 1, 7, dtype=torch.bool, device="meta")
    out, _ = ALL_ATTENTION_FUNCTIONS[attention.NAME](module, query, key, value, mask)
    assert copies == [2, 2] and out.shape == (3, 1, 4, 16)
