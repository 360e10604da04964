"""Evaluations that drive the services as a pipeline does: `judge` (agreement with human labels)."""
