"""Patches: what one transition changed, for a repository that appends it to a journal
instead of rewriting the saga's whole document
([`IncrementalSagaRepository`][saga_orchestrator.protocols.IncrementalSagaRepository]).

A patch is a JSON object:

- ``"head"``: the fields of the document outside its data and steps that the transition
  changed (of ``status``, ``current_step_index``, ``error``, ``updated_at``, ``deadline``,
  ``version``, ``event_sequence``, ``saga_version`` and ``error_history``; the fields fixed
  at creation, the ids, the type and ``created_at``, never change);
- ``"steps"``: for each step record the transition changed, by index, its fields that
  changed (``{"1": {"status": "completed", "completed_at": "="}}``): a field back at its
  default is given explicitly, and an instant that is the transition's own (the saga's new
  ``updated_at``) is written ``"="``;
- ``"data"`` (the whole data) or ``"data_fields"`` (the fields of a dataclass that changed),
  or neither when the data did not change.

[`decode_context`][saga_orchestrator.serialization.decode_context] applies patches to the
document they follow. Documented, and imported, through
[`saga_orchestrator.serialization`][].
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..state import SagaContext
from ._documents import _encode_document, _error_history, _quote, _step_text, _time_json
from ._values import _ENCODER, _RECORD_DEPTH, _encode_top, _json

PATCH_BUDGET = 2
"""Patches are written until their bytes since the last whole document would exceed this
many times that document's size; the next write is then whole again. A reader therefore
applies at most about twice the document's size in patches, and the bytes written per
transition stay flat in the saga's size."""


@dataclass(frozen=True, slots=True)
class StateChanges:
    """One transition's write, for a repository with incremental writes: exactly one of
    ``document`` and ``patch`` is set."""

    document: str | None
    """The whole document ([`encode_context`][saga_orchestrator.serialization.encode_context]),
    when it must be stored whole: the first write by this context object, or when the patches
    since the last whole document would grow past twice its size."""
    patch: str | None
    """Otherwise, what changed since the stored version the write expects, as a patch (see
    the module): [`decode_context`][saga_orchestrator.serialization.decode_context]
    ``(document, patches=[...])`` rebuilds the context from the last whole document and the
    patches after it, in order."""


def _data_texts(context: SagaContext[Any]) -> tuple[str | None, dict[str, str]]:
    """The data's JSON: field by field for a dataclass (its ``$dataclass`` name first), else
    whole (under the key ``""``)."""
    data = _encode_top(context.data, "data", _RECORD_DEPTH)
    where = f"saga {context.saga_id}"
    if type(data) is dict and type(data.get("fields")) is dict and len(data) == 2:
        tag = data.get("$dataclass")
        if type(tag) is str:
            try:
                return tag, {name: _ENCODER.encode(value) for name, value in data["fields"].items()}
            except ValueError:
                _json(data, where)  # raises, saying where
    return None, {"": _json(data, where)}


_HEAD_FIELDS = (
    "status",
    "current_step_index",
    "error",
    "updated_at",
    "deadline",
    "version",
    "event_sequence",
    "saga_version",
    "error_history",
)


def _head_texts(context: SagaContext[Any]) -> tuple[str, ...]:
    """The JSON of each field in ``_HEAD_FIELDS``, in that order."""
    error = context.error
    return (
        f'"{context.status._value_}"',
        str(context.current_step_index),
        "null" if error is None else _quote(error),
        _time_json(context.updated_at),
        _time_json(context.deadline),
        str(context.version),
        str(context.event_sequence),
        str(context.saga_version),
        _ENCODER.encode(_error_history(context)) if context.error_history else "[]",
    )


_STEP_DEFAULTS: dict[str, Any] = {
    "status": "pending",
    "attempts": 0,
    "effect_possible": False,
    "compensation_attempts": 0,
}
"""A step record's fields that are left out at their default, where the default is not
null (see ``_encode_step``)."""


_STEP_INSTANTS = frozenset(
    {
        "started_at",
        "completed_at",
        "next_attempt_at",
        "compensation_started_at",
        "compensated_at",
    }
)


def _record_changes(old: dict[str, Any], text: str, now: str | None) -> str:
    """The fields of a step record that differ from the record ``old``: a field left out
    of the new record (at its default) is given its default explicitly, and an instant that
    is the transition's own (``now``, the saga's new ``updated_at``) is written ``"="``."""
    new: dict[str, Any] = json.loads(text)
    changes = {
        name: "=" if now is not None and value == now and name in _STEP_INSTANTS else value
        for name, value in new.items()
        if name not in old or old[name] != value or type(old[name]) is not type(value)
    }
    for name in old.keys() - new.keys():
        changes[name] = _STEP_DEFAULTS.get(name)
    return _ENCODER.encode(changes)


def _data_text(texts: tuple[str | None, dict[str, str]]) -> str:
    tag, fields = texts
    if tag is None:
        return fields[""]
    inner = ",".join(f"{_quote(name)}:{text}" for name, text in fields.items())
    return f'{{"$dataclass":{_quote(tag)},"fields":{{{inner}}}}}'


def encode_changes(context: SagaContext[Any], *, baseline: bool) -> StateChanges:
    """The transition's write. ``baseline``: the stored version is the one this object last
    wrote (so its caches say what is stored); without it, the document is whole."""
    texts = _data_texts(context)
    previous = context._data_texts
    old_steps = context._step_json
    count = len(context.steps)
    if (
        baseline
        and previous is not None
        and old_steps is not None
        and len(old_steps) == count
        and previous[0] == texts[0]
        and context._head_texts is not None
    ):
        patch = _patch(context, texts, previous, old_steps)
        if context._patch_bytes + len(patch) <= PATCH_BUDGET * context._document_bytes:
            context._patch_bytes += len(patch)
            context._data_texts = texts
            return StateChanges(document=None, patch=patch)
    context._step_json = None  # kept only once the document is built
    step_texts = [_step_text(step) for step in context.steps]
    document = _encode_document(context, step_texts, _data_text(texts))
    context._step_json = step_texts
    context._step_json_at = context.current_step_index
    context._data_texts = texts
    context._head_texts = _head_texts(context)
    context._patch_bytes = 0
    context._document_bytes = len(document)
    return StateChanges(document=document, patch=None)


def _patch(
    context: SagaContext[Any],
    texts: tuple[str | None, dict[str, str]],
    previous: tuple[str | None, dict[str, str]],
    step_texts: list[str],
) -> str:
    count = len(step_texts)
    steps = []
    now = context.updated_at.isoformat() if context.updated_at is not None else None
    # Only the step the saga was at when last written, and the one it is at now, can have
    # changed: every transition of the state machine touches only those.
    for index in sorted({context._step_json_at, context.current_step_index}):
        if 0 <= index < count:
            text = _step_text(context.steps[index])
            if text != step_texts[index]:
                changes = _record_changes(json.loads(step_texts[index]), text, now)
                steps.append(f'"{index}":{changes}')
                step_texts[index] = text
    context._step_json_at = context.current_step_index
    head = _head_texts(context)
    old_head = context._head_texts
    assert old_head is not None  # encode_changes checked
    changed_head = [
        f'"{name}":{text}'
        for name, text, old in zip(_HEAD_FIELDS, head, old_head, strict=True)
        if text != old
    ]
    context._head_texts = head
    parts = [f'{{"head":{{{",".join(changed_head)}}}']
    if steps:
        parts.append(f',"steps":{{{",".join(steps)}}}')
    new_fields, old_fields = texts[1], previous[1]
    if texts[0] is None or new_fields.keys() != old_fields.keys():
        if new_fields != old_fields:
            parts.append(f',"data":{_data_text(texts)}')
    else:
        changed = [
            f"{_quote(name)}:{text}"
            for name, text in new_fields.items()
            if old_fields[name] != text
        ]
        if changed:
            parts.append(f',"data_fields":{{{",".join(changed)}}}')
    parts.append("}")
    return "".join(parts)
