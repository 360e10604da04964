"""Wiring: which servicers a process serves and how they are built (`catalog`), services started in
this process for pipelines, the CLI and tests (`local`), and the trainer's worker entry point."""
