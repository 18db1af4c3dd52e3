"""Logging set-up for the example: readable text, or one JSON object per line.

The library never configures logging; a service does, once, at start-up. Every record the
library writes carries `event` (a stable dotted name), `saga_id`, `saga_type` and `step`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_FIELDS = ("event", "saga_id", "saga_type", "step", "attempt", "correlation_id")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the saga fields the library puts on its records."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                document[name] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document)


def configure_logging(level: str = "WARNING", fmt: str = "text") -> None:
    """Send logs to stderr, readable (`text`) or one JSON object per line (`json`)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
