"""The AI judge: pairwise preference labels from option log-probabilities (method: docs/judge.md)."""
