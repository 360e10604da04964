"""Protobuf <-> domain conversion, one module a service (and `common` for the shared messages).

The only layer besides the servicers and clients that touches generated code: the domain packages
below it stay pure, the servicers and `charter.client` above it stay thin.
"""
