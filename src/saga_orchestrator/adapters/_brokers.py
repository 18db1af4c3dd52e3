"""What the broker publishers share: how they name a URL and an error in their messages."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["describe", "redact"]


def redact(url: str) -> str:
    """The URL without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def describe(exc: BaseException) -> str:
    """``"Type: message"``, with a message for a bare timeout."""
    text = str(exc)
    if isinstance(exc, TimeoutError) and not text:
        text = "no answer in time"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
