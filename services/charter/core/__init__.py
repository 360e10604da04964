"""Runtime shared by every Charter service: settings, logging, errors, metrics, the gRPC server."""
