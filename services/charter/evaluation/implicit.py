"""The gold signal no AI wrote: a policy's implicit preference accuracy on human-labelled pairs.

A policy π trained from a reference π_ref carries an implicit reward r(x, y) = β·log π(y|x)/π_ref(y|x)
(Rafailov et al. 2023, DPO §5). On a held-out pair where people preferred y_w to y_l, the policy
"agrees" when r(x, y_w) > r(x, y_l); β > 0 does not change the ranking, so it is left out. Accuracy is
the share of pairs it ranks the human's way (an exact tie counts half), with a Wilson 95% interval —
0.5 is chance, and π = π_ref scores exactly 0.5 (every pair ties).

`reply_logprobs` gives log π(y|x): the sum of the reply tokens' log-probabilities after the
conversation rendered with the model's chat template (`add_generation_prompt`), the reply rendered
as the assistant turn that follows; over-long texts drop their oldest tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from charter.judge.metrics import wilson

Conversation = Sequence[Mapping[str, str]]


def _encode(tokenizer: Any, conversation: Conversation, reply: str) -> tuple[list[int], int]:
    """(ids of conversation + reply, number of tokens after the prompt's: the reply and the template's
    end-of-turn marks — the same for both replies of a pair, so they cancel in the ranking)."""
    messages = [dict(m) for m in conversation]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    shared = 0
    for a, b in zip(prompt_ids, full_ids, strict=False):
        if a != b:
            break
        shared += 1
    return full_ids, len(full_ids) - shared


def reply_logprobs(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Conversation],
    replies: Sequence[str],
    *,
    batch_size: int = 4,
    max_length: int = 1024,
) -> list[float]:
    """log π(reply | conversation) for each pair, in order (batched longest first, no gradients)."""
    import torch

    encoded = [_encode(tokenizer, c, r) for c, r in zip(conversations, replies, strict=True)]
    encoded = [(ids[-max_length:], min(n, max_length - 1)) for ids, n in encoded]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    out = [0.0] * len(encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(encoded[i][0]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                seq = encoded[i][0]
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            for row, i in enumerate(chunk):
                seq, n = encoded[i]
                if n <= 0:
                    continue
                targets = torch.tensor(seq[len(seq) - n :], device=device)
                positions = torch.arange(len(seq) - n - 1, len(seq) - 1, device=device)
                logp = torch.log_softmax(logits[row, positions], dim=-1)
                out[i] = float(logp.gather(-1, targets[:, None]).sum())
    return out


def implicit_accuracy(
    policy_chosen: Sequence[float],
    policy_rejected: Sequence[float],
    ref_chosen: Sequence[float],
    ref_rejected: Sequence[float],
) -> dict[str, Any]:
    """Share of pairs where log π/π_ref ranks the human-chosen reply above the rejected one."""
    margins = [
        (pc - rc) - (pr - rr)
        for pc, pr, rc, rr in zip(policy_chosen, policy_rejected, ref_chosen, ref_rejected, strict=True)
    ]
    n = len(margins)
    wins = sum(1 for m in margins if m > 0)
    ties = sum(1 for m in margins if m == 0)
    if n == 0:
        return {"accuracy": None, "ci": [None, None], "n": 0, "ties": 0, "mean_margin": None}
    lo, hi = wilson(wins + ties // 2, n)  # a Wilson interval on whole pairs (ties split evenly)
    return {
        "accuracy": (wins + 0.5 * ties) / n,
        "ci": [lo, hi],
        "n": n,
        "ties": ties,
        "mean_margin": sum(margins) / n,
    }
