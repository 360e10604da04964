"""The gRPC servicers, one module a service: thin — convert with `charter.api`, delegate to the
domain package, let `charter.core.interceptors` map errors and check roles. Servicers never import
each other."""
