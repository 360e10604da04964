"""The reward-hacking watch's probe set and the policy's answers to it (docs/trainer.md).

The probe is fixed for a run: the first `size` usable prompts of the spec's files, or — without files —
a seeded sample of the run's own prompts that is held out of training. The policy answers greedily
(batched, no gradients), so two checks differ only because the weights did.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from charter.core.errors import InvalidArgument

Prompt = list[dict[str, Any]]
"""Chat messages ({role, content}) ending with the user's turn."""
BATCH_SIZE = 8


def read_probe_files(paths: Sequence[str], size: int) -> list[Prompt]:
    """The first `size` usable prompts of the files, in order (rows that fail to parse are skipped)."""
    from charter.datasets.sources import PromptRow, read_rows

    prompts: list[Prompt] = []
    for path in paths:
        for row in read_rows(path):
            if isinstance(row, PromptRow):
                prompts.append([{"role": m.role, "content": m.content} for m in row.messages])
            if len(prompts) == size:
                return prompts
    if not prompts:
        raise InvalidArgument("spec.watch.probe: the files hold no usable prompts", field="spec.watch.probe")
    return prompts


def hold_out(prompts: Sequence[Prompt], size: int, seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """(probe, training): a seeded sample of at most `size` prompts and at most half of them, and the rest."""
    n = min(size, len(prompts) // 2)
    if n < 1:
        raise InvalidArgument(
            f"spec.watch.probe: the run has {len(prompts)} prompt(s), too few to hold any out; "
            "give probe files",
            field="spec.watch.probe",
        )
    chosen = set(random.Random(seed).sample(range(len(prompts)), n))
    probe = [list(prompts[i]) for i in sorted(chosen)]
    return probe, [list(p) for i, p in enumerate(prompts) if i not in chosen]


def greedy_replies(
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], max_new_tokens: int, max_prompt_length: int | None
) -> list[str]:
    """Each prompt's greedy answer (chat template, left-padded batches, no gradients); the model's
    training mode is restored afterwards."""
    import torch
    from transformers import GenerationConfig

    from charter.trainer.ppo.modeling import pad_rows

    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    room = getattr(model.config, "max_position_embeddings", None)
    limits = [n for n in (max_prompt_length, room and room - max_new_tokens) if n]
    if limits:
        encoded = [row[-max(1, min(limits)) :] for row in encoded]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = model.generation_config.eos_token_id
    eos_ids = sorted({tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None})
    config = GenerationConfig(  # type: ignore[no-untyped-call]  # transformers leaves __init__ unannotated
        do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos_ids or None
    )
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    replies = [""] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), BATCH_SIZE):
                chunk = order[start : start + BATCH_SIZE]
                ids, mask = pad_rows([encoded[i] for i in chunk], pad, left=True)
                out = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
                )
                for i, row in zip(chunk, out[:, ids.shape[1] :].tolist(), strict=True):
                    end = next((k for k, t in enumerate(row) if t in eos_ids), len(row))
                    replies[i] = tokenizer.decode(row[:end], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return replies
