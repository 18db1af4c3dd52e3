"""`async with` for the adapters: open on entry, close on exit."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncLifecycle:
    """Adds ``async with`` to a class that defines ``open()`` and ``close()``."""

    async def open(self) -> None:
        """Acquire resources now (adapters otherwise open on first use)."""

    async def close(self) -> None:
        """Release resources; using the object again reopens it."""

    async def __aenter__(self) -> Self:
        """Open (``open``) and return this object."""
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close (``close``)."""
        await self.close()
