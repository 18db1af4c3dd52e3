"""The command line's exit statuses, and the errors that end a command with one."""

from __future__ import annotations

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "Failed",
    "UsageError",
]

PROG = "saga-orchestrator"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad usage found after parsing (exit 2)."""


class Failed(Exception):
    """The operation failed, already explained (exit 1)."""
