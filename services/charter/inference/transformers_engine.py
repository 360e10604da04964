"""The Hugging Face transformers engine: the embedded CPU default, and the trainer's engine.

Generation: batched `generate` with left padding, one call per group of requests that share
sampling settings. When the group's prompts begin alike (the critic's few-shot block: ~2,500 of a
critique prompt's ~2,900 tokens), the shared beginning runs once and its key/value cache is copied to
every row; each row's own tail follows it, left-padded after it, so prefill runs the shared tokens
once instead of once per row. Option scoring: one forward pass over the padded (prompt + option) sequences —
except that prompts sharing long prefixes run each shared stretch once, as a prefix tree
(`tokens.prefix_tree`: the few-shot block of a batch, then a pair's conversation, then each order's
responses, then the K principle questions), extending copies of the key/value cache; only the rows'
differing tails run as padded batches. So K principles cost far less than K times one.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from charter.core.errors import InvalidArgument, NotFound
from charter.inference import attention
from charter.inference.allocator import keep_freed_memory
from charter.inference.local import LocalEngine
from charter.inference.tokens import (
    PrefixNode,
    PreparedChat,
    ScoreItem,
    prefix_tree,
    shared_length,
    truncate_at_stop,
)
from charter.inference.types import ChatResult, Completion, ModelInfo, Sampling

_DTYPES = {"bfloat16", "float16", "float32"}


class TransformersEngine(LocalEngine):
    engine_name = "transformers"

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        dtype: str = "bfloat16",
        threads: int | None = None,
        max_model_len: int | None = None,
        score_batch_tokens: int = 16_384,
        shared_prefix_tokens: int | None = 64,
        **kwargs: Any,
    ) -> None:
        if not Path(path).is_dir():
            raise NotFound(f"model folder {path} does not exist", field="model", value=str(path))
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated in transformers

        if dtype not in _DTYPES:
            raise InvalidArgument(f"dtype must be one of {sorted(_DTYPES)} (value: {dtype!r})")
        if threads:
            torch.set_num_threads(threads)
        keep_freed_memory()  # each decoding step's tensors reuse the last step's memory (inference.allocator)
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
        self.hf_model.eval()  # type: ignore[no-untyped-call]  # unannotated in transformers
        self.attention = attention.use(self.hf_model)
        """The model's attention: `charter_sdpa` (grouped-query heads without copying the key/value
        cache, inference.attention) where it ran transformers' `sdpa`."""
        limit = getattr(self.hf_model.config, "max_position_embeddings", None) or 2048
        self.score_batch_tokens = score_batch_tokens
        self.shared_prefix_tokens = shared_prefix_tokens
        """Prompts (scored or generated together) that share at least this many leading tokens run them
        once; None: never."""
        self.prefill_positions = 0
        """Token positions the model has run to prefill generation prompts, padding included (what a
        shared prefix saves)."""
        self.scored_positions = 0
        """Token positions the model has run for option scoring, padding included (what prefix sharing
        saves, read by benchmarks/judge_principles.py)."""
        info = ModelInfo(
            name=name or Path(path).name,
            engine=self.engine_name,
            path=str(path),
            max_model_len=min(max_model_len or limit, limit),
        )
        super().__init__(info, **kwargs)

    # ---- chat ----------------------------------------------------------------------------------
    def _generate(self, prepared: list[PreparedChat]) -> list[ChatResult]:
        results: dict[int, ChatResult] = {}

        def key(i: int) -> Sampling:  # requests with equal sampling share a call
            return prepared[i].sampling

        order = sorted(range(len(prepared)), key=lambda i: repr(key(i)))
        for sampling, group in itertools.groupby(order, key=key):
            indices = list(group)
            for i, result in zip(
                indices, self._generate_group([prepared[i].ids for i in indices], sampling), strict=True
            ):
                results[i] = result
        return [results[i] for i in range(len(prepared))]

    def _generate_group(self, prompts: list[list[int]], sampling: Sampling) -> list[ChatResult]:
        torch = self._torch
        pad = self.tokenizer.pad_token_id
        greedy = sampling.temperature == 0.0
        runs = 1 if greedy else sampling.n  # greedy samples are identical: decode once, repeat
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "do_sample": not greedy,
            "pad_token_id": pad,
        }
        if not greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        kwargs["stopping_criteria"] = self._stop_when_abandoned()
        shared = self._shared_length(prompts) if len(prompts) * runs > 1 else 0
        tails = [p[shared:] for p in prompts]
        width = max(len(x) for x in tails)
        input_ids = torch.tensor(
            [p[:shared] + [pad] * (width - len(x)) + x for p, x in zip(prompts, tails, strict=True)]
        )
        attention = torch.tensor([[1] * shared + [0] * (width - len(x)) + [1] * len(x) for x in tails])
        if shared:  # the shared beginning once; every row (each sample of each prompt) starts from a copy
            kwargs["past_key_values"] = self._prefix_cache(prompts[0][:shared], len(prompts) * runs)
            input_ids = input_ids.repeat_interleave(runs, dim=0)
            attention = attention.repeat_interleave(runs, dim=0)
            self.prefill_positions += shared + input_ids.shape[0] * width
        else:
            kwargs["num_return_sequences"] = runs
            self.prefill_positions += len(prompts) * runs * width
        with torch.inference_mode():
            # the Auto class's return type leaves out GenerationMixin, which every causal LM has
            out = self.hf_model.generate(  # type: ignore[misc]
                input_ids=input_ids, attention_mask=attention, **kwargs
            )
        width += shared
        new = out[:, width:].tolist()
        eos = set(_as_list(self.hf_model.generation_config.eos_token_id))
        results = []
        for p, prompt in enumerate(prompts):
            completions = []
            for s in range(sampling.n):
                tokens = new[p * runs + (s if runs > 1 else 0)]
                ended = next((k for k, t in enumerate(tokens) if t in eos), None)
                kept = tokens[:ended] if ended is not None else [t for t in tokens if t != pad]
                text, stopped = truncate_at_stop(
                    self.tokenizer.decode(kept, skip_special_tokens=True), sampling.stop
                )
                finish: Literal["stop", "length"] = "stop" if ended is not None or stopped else "length"
                count = ended + 1 if ended is not None else len(kept)
                completions.append(Completion(text, len(prompt), count, finish))
            results.append(ChatResult(tuple(completions)))
        return results

    def _shared_length(self, prompts: list[list[int]]) -> int:
        """How many leading tokens every prompt shares, when worth running once (at least
        `shared_prefix_tokens`; each prompt keeps one token of its own, which gives its first logits);
        0 otherwise."""
        if self.shared_prefix_tokens is None:
            return 0
        length = min(shared_length(prompts), min(len(p) for p in prompts) - 1)
        return length if length >= self.shared_prefix_tokens else 0

    def _prefix_cache(self, prefix: list[int], rows: int) -> Any:
        """The key/value cache of `prefix`, run once, copied for `rows` rows."""
        torch = self._torch
        with torch.inference_mode():
            ids = torch.tensor([prefix])
            cache = self.hf_model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values
        cache.batch_repeat_interleave(rows)
        return cache

    def _load_weights(self, folder: str) -> int:
        """The pushed tensors copied into the model's parameters (cast to its dtype), file by file."""
        from safetensors.torch import load_file

        count = 0
        with self._torch.no_grad():
            for file in sorted(Path(folder).glob("*.safetensors")):
                for name, tensor in load_file(str(file)).items():
                    self.hf_model.get_parameter(name).copy_(tensor)  # a tied name finds the shared one
                    count += 1
        return count

    def _stop_when_abandoned(self) -> Any:
        """Decoding stops at the next token once no caller waits for the batch (`abandoned`): past
        a deadline the CPU goes to the next batch, and a closing engine's worker ends within a step
        (before, `close` gave up after 60 s and the process could exit mid-call: torch aborted it)."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        engine, torch = self, self._torch

        class Abandoned(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), engine.abandoned(), dtype=torch.bool)

        return StoppingCriteriaList([Abandoned()])

    # ---- option scoring ------------------------------------------------------------------------
    def _tail_logprobs(self, rows: list[list[int]], keep: list[int]) -> Iterator[tuple[int, Any]]:
        """(row index, log-softmax over the vocabulary at the row's last `keep[i]` positions)."""
        if self.shared_prefix_tokens is None:
            yield from self._padded(rows, keep, list(range(len(rows))))
            return
        roots, singles = prefix_tree(rows, keep, self.shared_prefix_tokens)
        for root in roots:
            yield from self._node(rows, keep, root, None)
        yield from self._padded(rows, keep, singles)

    def _node(
        self, rows: list[list[int]], keep: list[int], node: PrefixNode, cache: Any
    ) -> Iterator[tuple[int, Any]]:
        """Run the node's shared tokens once on a copy of its parent's key/value cache, then its children
        on copies of the result, then its tails as padded batches on copies of it."""
        torch = self._torch
        segment = rows[node.rows[0]][node.start : node.end]
        self.scored_positions += len(segment)
        with torch.inference_mode():
            cache = self.hf_model(
                input_ids=torch.tensor([segment]),
                attention_mask=torch.ones(1, node.end, dtype=torch.long),
                position_ids=torch.arange(node.start, node.end).unsqueeze(0),
                past_key_values=copy.deepcopy(cache) if cache is not None else None,
                use_cache=True,
                logits_to_keep=1,
            ).past_key_values
        for child in node.children:
            yield from self._node(rows, keep, child, cache)
        if node.tails:
            yield from self._tails(rows, keep, node.end, node.tails, cache)

    def _tails(
        self, rows: list[list[int]], keep: list[int], length: int, members: list[int], prefix: Any
    ) -> Iterator[tuple[int, Any]]:
        """Rows whose first `length` tokens are in the `prefix` cache: each chunk of their tails runs on a
        copy of it, left-padded after it so every tail ends at the same place."""
        torch = self._torch
        pad = self.tokenizer.pad_token_id
        widest = max(len(rows[i]) - length for i in members)
        size = max(1, min(self.score_batch_tokens // widest, 32))  # 32 copies of the cache at most
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            tails = [rows[i][length:] for i in chunk]
            width = max(len(x) for x in tails)
            ids = torch.tensor([[pad] * (width - len(x)) + x for x in tails])
            mask = torch.tensor([[1] * length + [0] * (width - len(x)) + [1] * len(x) for x in tails])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, length:]
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(len(chunk))
            self.scored_positions += ids.numel()
            tail = max(keep[i] for i in chunk)
            with torch.inference_mode():
                logits = self.hf_model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    logits_to_keep=tail,
                ).logits
                logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, i in enumerate(chunk):
                yield i, logprobs[row, tail - keep[i] :]

    def _padded(
        self, rows: list[list[int]], keep: list[int], indices: list[int]
    ) -> Iterator[tuple[int, Any]]:
        """Rows are left-padded so that every row ends at the same place; the LM head then runs on the
        last positions only (`logits_to_keep`) — on all positions it would cost as much as the model."""
        torch = self._torch
        pad = self.tokenizer.pad_token_id
        order = sorted(indices, key=lambda i: -len(rows[i]))  # longest first: little padding
        start = 0
        while start < len(order):
            width = len(rows[order[start]])
            chunk = order[start : start + max(1, self.score_batch_tokens // width)]
            start += len(chunk)
            ids = torch.tensor([[pad] * (width - len(rows[i])) + rows[i] for i in chunk])
            mask = torch.tensor([[0] * (width - len(rows[i])) + [1] * len(rows[i]) for i in chunk])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            tail = max(keep[i] for i in chunk)
            self.scored_positions += ids.numel()
            with torch.inference_mode():
                logits = self.hf_model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=tail
                ).logits
                logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, i in enumerate(chunk):
                yield i, logprobs[row, tail - keep[i] :]

    def _score(self, items: list[ScoreItem]) -> list[list[float]]:
        torch = self._torch
        out: list[list[float]] = [[] for _ in items]
        # single-token options: one pass over the prompt, read the next-token distribution
        single = [i for i, item in enumerate(items) if item.single_token]
        for row, lp in self._tail_logprobs([items[i].prompt for i in single], [1] * len(single)):
            ids = torch.tensor([o[0] for o in items[single[row]].options])
            out[single[row]] = lp[0, ids].tolist()
        # multi-token options: one row per (prompt + option); the option's L tokens are predicted
        # by the L positions before the row's end
        rows = [
            (i, k) for i, item in enumerate(items) if not item.single_token for k in range(len(item.options))
        ]
        options = [items[i].options[k] for i, k in rows]
        values: dict[tuple[int, int], float] = {}
        sequences = [items[i].prompt + option for (i, _), option in zip(rows, options, strict=True)]
        for row, lp in self._tail_logprobs(sequences, [len(o) + 1 for o in options]):
            option = torch.tensor(options[row])
            values[rows[row]] = float(lp[torch.arange(len(options[row])), option].sum())
        for i, item in enumerate(items):
            if not item.single_token:
                out[i] = [values[(i, k)] for k in range(len(item.options))]
        return out


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
