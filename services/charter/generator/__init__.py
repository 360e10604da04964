"""The generator service: completions for prompts, N samples each."""
