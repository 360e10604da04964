"""Moved to `charter.datasets.records` (evaluation uses it too); this name goes once every caller imports
the new one."""

from charter.datasets.records import OutputStore

__all__ = ["OutputStore"]
