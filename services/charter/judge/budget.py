"""How many scoring requests one judge keeps in the engine at once."""

from __future__ import annotations

import asyncio


class Budget:
    """At most `size` scoring requests in flight: a call with thousands of items is fed to the
    engine a few hundred requests at a time instead of overflowing its queue (`max_pending`)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._changed = asyncio.Condition()

    async def take(self, n: int) -> int:
        n = min(n, self.size)
        async with self._changed:
            await self._changed.wait_for(lambda: self.free >= n)
            self.free -= n
        return n

    async def give(self, n: int) -> None:
        async with self._changed:
            self.free += n
            self._changed.notify_all()
