"""Texts of values written again and again: a saga's instants and ids, once per transition."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

V = TypeVar("V")


def identity_texts(render: Callable[[V], str], limit: int = 4096) -> Callable[[V], str]:
    """``render``, remembering its text for each object it was given, by identity: the
    entry holds the object, so its id is not reused while it is there. For immutable values
    (datetimes, UUIDs, ``None``) whose same object is written many times; at most ``limit``
    entries, then it starts afresh."""
    texts: dict[int, tuple[Any, str]] = {}

    def text(value: V) -> str:
        entry = texts.get(id(value))
        if entry is not None and entry[0] is value:
            return entry[1]
        if len(texts) >= limit:
            texts.clear()
        rendered = render(value)
        texts[id(value)] = (value, rendered)
        return rendered

    return text
