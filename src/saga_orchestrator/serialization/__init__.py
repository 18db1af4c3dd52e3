"""Exact, self-describing JSON for saga data and state.

Values round-trip exactly or are refused with [`SerializationError`][] before anything is
written. Supported: ``None``, ``bool``, ``int``, finite ``float``, ``str``, ``Decimal`` (finite,
as a string, so ``Decimal("0.10")`` keeps its exponent), ``UUID``, timezone-aware ``datetime``,
``date``, ``timedelta``, ``bytes``, enums, dataclasses (nested), lists, tuples and dicts with
string keys. Naive datetimes, sets, NaN and arbitrary objects are refused.

Tagged values are JSON objects with one key starting with ``$``; dataclasses and enums are
named by ``module:QualifiedName`` and imported again when read, so they must be defined at
module level.

Two bounds keep every stored value writable and readable: lists, tuples, dicts, dataclasses and
enum members nest at most [`MAX_DEPTH`][saga_orchestrator.serialization.MAX_DEPTH] levels deep
in a value, and an ``int`` has at most
[`MAX_INT_DIGITS`][saga_orchestrator.serialization.MAX_INT_DIGITS] decimal digits. A value past
either is refused with [`SerializationError`][] naming where it is, and so is stored text past
them when it is read (as is any malformed document: reading raises nothing else).
"""

# The value codec (encode_value, dumps, the bounds) is in _values, the saga-document codec
# (encode_context, decode_context, the step and error-history records) in _documents. The
# public names are re-exported here, and documented here, in this order.

from __future__ import annotations

# isort: off
from ._values import MAX_DEPTH
from ._values import MAX_INT_DIGITS
from ._values import UnresolvedValue
from ._values import encode_value
from ._values import decode_value
from ._values import dumps
from ._values import loads
from ._documents import encode_context
from ._documents import decode_context
from ._patches import StateChanges
# isort: on

# Not public: the orchestrator's incremental encoder and its warning about __main__ classes.
from ._documents import FORMAT_VERSION as FORMAT_VERSION
from ._documents import encode_transition as encode_transition
from ._patches import encode_changes as encode_changes
from ._values import _MAIN_MODULE_TYPES as _MAIN_MODULE_TYPES
from ._values import main_module_warning as main_module_warning
from ._values import take_main_module_types as take_main_module_types

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "StateChanges",
    "UnresolvedValue",
    "decode_context",
    "decode_value",
    "dumps",
    "encode_context",
    "encode_value",
    "loads",
]
