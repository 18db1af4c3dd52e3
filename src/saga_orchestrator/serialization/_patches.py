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

from dataclasses import dataclass
from typing import Any

from ..state import SagaContext, StepState
from ._documents import (
    _encode_document,
    _error_history,
    _quote,
    _step_text,
    _time_json,
)
from ._values import _RECORD_DEPTH, _encode_top, _fast_json, _json

PATCH_BUDGET = 2
"""Patches are written until their bytes since the last whole document would exceed this
many times that document's size; the next write is then whole again. A reader therefore
applies at most about twice the document's size in patches, and the bytes written per
transition stay flat in the saga's size."""


@dataclass(frozen=True, slots=True)
class StateChanges:
    """One transition's write, for a repository with incremental writes: exactly one of
    ``document`` and ``patch`` is set.

    A patch is a JSON object, applied to the document it follows by
    [`decode_context`][saga_orchestrator.serialization.decode_context]:

    - ``"head"``: the fields of the document outside its data and steps that the transition
      changed (of ``status``, ``current_step_index``, ``error``, ``updated_at``,
      ``deadline``, ``version``, ``event_sequence``, ``saga_version`` and
      ``error_history``); the ids, the type and ``created_at`` never change;
    - ``"steps"`` (when some changed): for each step record the transition changed, by
      index, its fields that changed (``{"1": {"status": "completed", "completed_at":
      "="}}``): a field back at its default is given explicitly, and an instant that is the
      transition's own (the saga's new ``updated_at``) is written ``"="``;
    - ``"data"`` (the whole data) or ``"data_fields"`` (the fields of a dataclass that
      changed), or neither when the data did not change.

    Store it as it is: only ``decode_context`` needs to read it.
    """

    document: str | None
    """The whole document ([`encode_context`][saga_orchestrator.serialization.encode_context]),
    when it must be stored whole: the first write by this context object, or when the patches
    since the last whole document would grow past twice its size."""
    patch: str | None
    """Otherwise, what changed since the stored version the write expects, as a patch (see
    above): [`decode_context`][saga_orchestrator.serialization.decode_context]
    ``(document, patches=[...])`` rebuilds the context from the last whole document and the
    patches after it, in order."""


_DataCache = tuple[str | None, str, dict[str, Any], dict[str, str] | None]
"""The data as last written: its dataclass name (``None``: not a dataclass), its JSON, its
JSON-ready fields (the whole value under ``""`` if not a dataclass), and their JSON, field by
field, once computed."""


def _data_values(context: SagaContext[Any]) -> _DataCache:
    """The data's ``_DataCache``, field texts not computed yet."""
    data = _encode_top(context.data, "data", _RECORD_DEPTH)
    try:
        text = _fast_json(data)
    except ValueError:  # raises the same, saying where
        text = _json(data, f"saga {context.saga_id}")
    if type(data) is dict and len(data) == 2 and type(data.get("fields")) is dict:
        tag = data.get("$dataclass")
        if type(tag) is str:
            return tag, text, data["fields"], None
    return None, text, {"": data}, None


def _changed_fields(values: _DataCache, previous: _DataCache) -> tuple[dict[str, str], list[str]]:
    """The new data's field texts, and ``"name":text`` for each field whose text changed.
    Only the fields Python finds unequal are encoded; the whole text they make with the
    others' previous texts must then be the data's new text (``1 == True``, ``0.0 == -0.0``
    and dicts in another order are equal in Python, not in JSON), else every field is."""
    old_texts = _field_texts(previous)
    old_fields = previous[2]
    texts = dict(old_texts)
    for name, value in values[2].items():
        if old_fields[name] != value:
            texts[name] = _fast_json(value)
    inner = ",".join(f"{_quote(name)}:{text}" for name, text in texts.items())
    assert values[0] is not None
    if f'{{"$dataclass":{_quote(values[0])},"fields":{{{inner}}}}}' != values[1]:
        texts = _field_texts((*values[:3], None))
    changed = [f"{_quote(name)}:{text}" for name, text in texts.items() if old_texts[name] != text]
    return texts, changed


def _field_texts(values: _DataCache) -> dict[str, str]:
    texts = values[3]
    if texts is None:
        texts = {name: _fast_json(value) for name, value in values[2].items()}
    return texts


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


def _head_values(context: SagaContext[Any]) -> tuple[Any, ...]:
    """The fields in ``_HEAD_FIELDS``, in that order, as compared from one write to the next
    (instants as their JSON text: equal instants at other offsets are other text)."""
    return (
        context.status,
        context.current_step_index,
        context.error,
        _time_json(context.updated_at),
        _time_json(context.deadline),
        context.version,
        context.event_sequence,
        context.saga_version,
        tuple(context.error_history),
    )


def _head_json(context: SagaContext[Any], index: int, value: Any) -> str:
    """The JSON of the ``index``-th field of ``_head_values``."""
    if index == 0:
        return f'"{value._value_}"'
    if index == 2:
        return "null" if value is None else _quote(value)
    if index in (3, 4):
        return str(value)
    if index == 8:
        return _fast_json(_error_history(context)) if value else "[]"
    return str(int(value))


_STEP_COUNTS = ("attempts", "compensation_attempts")
_STEP_TEXTS = ("error", "compensation_error", "waiting_for", "event_id")
_STEP_INSTANTS = (
    "started_at",
    "completed_at",
    "next_attempt_at",
    "compensation_started_at",
    "compensated_at",
    "wait_until",
)


_NOW = '"="'
"""An instant that is the transition's own, in a patch's step record."""


def _step_changes(old: StepState, new: StepState, now: str) -> str:
    """The fields of the step record ``new`` that differ from ``old``, as a JSON object: a
    field back at its default is given explicitly, and an instant that is the transition's
    own (``now``, the saga's new ``updated_at`` as JSON) is written ``"="``. Empty: none."""
    parts = []
    if new.status is not old.status:
        parts.append(f'"status":"{new.status._value_}"')
    for name in _STEP_COUNTS:
        value = getattr(new, name)
        if value != getattr(old, name):
            parts.append(f'"{name}":{int(value)}')
    for name in _STEP_TEXTS:
        value = getattr(new, name)
        if value != getattr(old, name):
            parts.append(f'"{name}":{"null" if value is None else _quote(value)}')
    if new.effect_possible is not old.effect_possible:
        parts.append(f'"effect_possible":{"true" if new.effect_possible else "false"}')
    for name in _STEP_INSTANTS:
        text = _time_json(getattr(new, name))
        if text != _time_json(getattr(old, name)):
            parts.append(f'"{name}":{_NOW if text == now and text != "null" else text}')
    return f"{{{','.join(parts)}}}" if parts else ""


@dataclass(slots=True, eq=False)
class _Written:
    """What a context object last wrote (``SagaContext._written``), the base of its next
    patch: the data, the head's values, copies of the step records, and the bytes of patches
    since the whole document of ``document_bytes``."""

    data: _DataCache
    head: tuple[Any, ...]
    steps: list[StepState]
    document_bytes: int
    patch_bytes: int = 0


def encode_changes(context: SagaContext[Any], *, baseline: bool) -> StateChanges:
    """The transition's write. ``baseline``: the stored version is the one this object last
    wrote (so ``context._written`` says what is stored); without it, the document is whole."""
    values = _data_values(context)
    written = context._written
    if (
        baseline
        and isinstance(written, _Written)
        and len(written.steps) == len(context.steps)
        and written.data[0] == values[0]
    ):
        patch, values = _patch(context, values, written)
        if written.patch_bytes + len(patch) <= PATCH_BUDGET * written.document_bytes:
            written.patch_bytes += len(patch)
            written.data = values
            return StateChanges(document=None, patch=patch)
    context._step_json = None  # kept only once the document is built
    step_texts = [_step_text(step) for step in context.steps]
    document = _encode_document(context, step_texts, values[1])
    context._step_json = step_texts
    context._step_json_at = context.current_step_index
    context._written = _Written(
        data=values,
        head=_head_values(context),
        steps=[step.copy() for step in context.steps],
        document_bytes=len(document),
    )
    return StateChanges(document=document, patch=None)


def _patch(
    context: SagaContext[Any], values: _DataCache, written: _Written
) -> tuple[str, _DataCache]:
    """The patch from ``written`` to the context (the head and step records in ``written``
    brought up to date), and the data's cache for the next one."""
    old_steps = written.steps
    count = len(old_steps)
    steps = []
    now = _time_json(context.updated_at)
    # Only the step the saga was at when last written, and the one it is at now, can have
    # changed: every transition of the state machine touches only those.
    for index in sorted({context._step_json_at, context.current_step_index}):
        if 0 <= index < count:
            step = context.steps[index]
            changes = _step_changes(old_steps[index], step, now)
            if changes:
                steps.append(f'"{index}":{changes}')
                old_steps[index] = step.copy()
    context._step_json_at = context.current_step_index
    context._step_json = None  # the texts of the whole write are out of date now
    head = _head_values(context)
    old_head = written.head
    changed_head = [
        f'"{_HEAD_FIELDS[index]}":{_head_json(context, index, value)}'
        for index, (value, old) in enumerate(zip(head, old_head, strict=True))
        if value != old or type(value) is not type(old)
    ]
    written.head = head
    parts = [f'{{"head":{{{",".join(changed_head)}}}']
    if steps:
        parts.append(f',"steps":{{{",".join(steps)}}}')
    previous = written.data
    if values[1] != previous[1]:  # the data changed: which fields?
        if values[0] is None or list(values[2]) != list(previous[2]):
            parts.append(f',"data":{values[1]}')
        else:
            texts, changed = _changed_fields(values, previous)
            parts.append(f',"data_fields":{{{",".join(changed)}}}')
            values = (*values[:3], texts)
    parts.append("}")
    return "".join(parts), values
