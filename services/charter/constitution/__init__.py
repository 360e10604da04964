"""Constitutions: the schema, loading and validation, the hot-reloading registry, llm-swarm import.

Pure domain code: nothing here imports grpc or the generated protobuf code.
"""

from charter.constitution.loader import ConstitutionError, load_constitution, parse_constitution
from charter.constitution.registry import ConstitutionRegistry, LoadedConstitution
from charter.constitution.schema import Constitution, Principle, content_digest

__all__ = [
    "Constitution",
    "ConstitutionError",
    "ConstitutionRegistry",
    "LoadedConstitution",
    "Principle",
    "content_digest",
    "load_constitution",
    "parse_constitution",
]
