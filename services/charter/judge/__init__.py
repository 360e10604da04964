"""The AI judge: pairwise preference labels from option log-probabilities (DESIGN §3)."""
