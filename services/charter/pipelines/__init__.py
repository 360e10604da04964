"""Pipelines: specs (YAML under the top-level `pipelines/`) and the runners that drive the services
over gRPC, as any external caller would."""
