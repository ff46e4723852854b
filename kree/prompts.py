"""
Answers to a job's prompt, checked by the daemon before the engine sees them.

When a workflow's kree.actor.UserInput asks for input, the engine puts the job
in WAITING and emits a waiting event whose prompt is
C{{"title": str, "fields": [{"name", "type", "label", "default", "choices"}]}}.
A frontend answers with C{POST /v1/jobs/{id}/input}; L{check_answer} checks
that answer against the pending prompt so that a wrong answer is refused with
a precise 422 (L{InvalidAnswer}) instead of failing the job.  It returns the
complete, normalised answers (every field present, defaults filled in,
doubles as floats) to hand to the engine.

The rules are those of kree/engine/actors/interaction.py (UserInput._check),
sometimes stricter (a string at most MAX_STRING characters, a double finite),
never looser: the engine checks the answer again, and an answer that passes
here must pass there.  A prompt that our engine could not have produced is
L{PromptUnreadable} (409): the job's prompt cannot be answered.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from kree.errors import KreeError

# The same rules as kree.engine.actors.interaction (not imported: the daemon
# does not load the engine).
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FIELD_TYPES = ("string", "int", "double", "boolean", "choice")
MAX_STRING = 100_000
# How many names an error message lists before "and N more".
_MAX_LISTED = 20


class InvalidAnswer(KreeError):
    """The answer does not fit the pending prompt (details: field/fields)."""

    status = 422
    code = "invalid_answer"


class PromptUnreadable(KreeError):
    """The job's pending prompt is not one our engine produces: it cannot be answered."""

    status = 409
    code = "prompt_unreadable"

    def __init__(self, problem: str, **details: Any) -> None:
        super().__init__(f"the job's prompt cannot be answered: {problem}", problem=problem,
                         **details)


def check_answer(prompt: dict, body: Any) -> dict[str, Any]:
    """
    The complete, normalised answers to C{prompt} given by C{body}, the parsed
    JSON request body: C{{"answers": {name: value, ...}}} or the answers
    object itself.  Raises L{InvalidAnswer} (422) naming the fields at fault,
    or L{PromptUnreadable} (409) when the prompt itself is malformed.
    """
    fields = read_prompt(prompt)
    answers = _answers(body, fields)
    names = [f["name"] for f in fields]

    unknown = sorted(set(answers) - set(names), key=str)
    if unknown:
        raise InvalidAnswer(
            f"the answer has unknown field{'s' if len(unknown) > 1 else ''} "
            f"{_list(unknown)} (expected {_list(names)})",
            **_fields_detail(unknown), expected=names)

    missing = [f["name"] for f in fields
               if answers.get(f["name"]) is None and f["default"] is None]
    if missing:
        raise InvalidAnswer(
            f"the answer gives no value for field{'s' if len(missing) > 1 else ''} "
            f"{_list(missing)}", **_fields_detail(missing))

    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for field in fields:
        name = field["name"]
        value = answers.get(name)
        if value is None:
            values[name] = field["default"]
            continue
        ok, converted, why = _convert(field, value)
        if ok:
            values[name] = converted
        else:
            problems[name] = (f"the answer for field {name} must be {_describe(field)}, "
                              f"not {_show(value)}" + (f" ({why})" if why else ""))
    if problems:
        raise InvalidAnswer("; ".join(problems.values()), **_fields_detail(list(problems)))
    return values


def read_prompt(prompt: Any) -> list[dict[str, Any]]:
    """
    The fields of C{prompt}, normalised ({name, type, label, default[, choices]},
    default None when there is none, converted to the field's type), or
    L{PromptUnreadable}.  Unknown entries are ignored: they do not change how
    an answer is checked.
    """
    if not isinstance(prompt, dict):
        raise PromptUnreadable("the prompt is not an object")
    value = prompt.get("fields")
    if not isinstance(value, list) or not value:
        raise PromptUnreadable("the prompt has no fields (a non-empty array is needed)")
    fields: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, spec in enumerate(value):
        if not isinstance(spec, dict):
            raise PromptUnreadable(f"fields element {i} is not an object")
        name = spec.get("name")
        if not isinstance(name, str) or not FIELD_NAME.match(name):
            raise PromptUnreadable(f"fields element {i} has no valid name")
        if name in seen:
            raise PromptUnreadable(f"field {name} is declared twice", field=name)
        seen.add(name)
        kind = spec.get("type")
        if kind not in FIELD_TYPES:
            raise PromptUnreadable(f"field {name} has an unknown type {_show(kind)}", field=name)
        label = spec.get("label", name)
        field: dict[str, Any] = {"name": name, "type": kind,
                                 "label": label if isinstance(label, str) else name,
                                 "default": None}
        if kind == "choice":
            choices = spec.get("choices")
            if (not isinstance(choices, list) or not choices
                    or not all(isinstance(c, str) for c in choices)):
                raise PromptUnreadable(f"field {name} is a choice without choices", field=name)
            field["choices"] = list(choices)
        default = spec.get("default")
        if default is not None:
            ok, converted, _ = _convert(field, default, answer=False)
            if not ok:
                raise PromptUnreadable(
                    f"the default of field {name} is not {_describe(field)}", field=name)
            field["default"] = converted
        fields.append(field)
    return fields


# -- helpers ---------------------------------------------------------------------------------


def _answers(body: Any, fields: list[dict[str, Any]]) -> dict[str, Any]:
    """The answers object out of either body shape."""
    shapes = '{"answers": {name: value, ...}} or {name: value, ...}'
    if not isinstance(body, dict):
        raise InvalidAnswer(f"the body must be a JSON object: {shapes}")
    if "answers" not in body:
        return body
    wrapped = body["answers"]
    if isinstance(wrapped, dict):
        # No field type takes an object, so this is the wrapper (as in the engine).
        others = sorted((k for k in body if k != "answers"), key=str)
        if others:
            raise InvalidAnswer(
                f"the body has entries besides answers: {_list(others)} ({shapes})",
                **_fields_detail(others))
        return wrapped
    if any(f["name"] == "answers" for f in fields):
        return body  # a field named "answers", answered directly
    raise InvalidAnswer(f"answers must be an object of name: value, not {_show(wrapped)}",
                        field="answers")


def _convert(field: dict[str, Any], value: Any, *,
             answer: bool = True) -> tuple[bool, Any, str]:
    """
    (True, the value as the field's type, "") or (False, None, why or "").
    The length limit on strings is for answers only, not for defaults.
    """
    kind = field["type"]
    if kind == "string":
        if not isinstance(value, str):
            return False, None, ""
        if answer and len(value) > MAX_STRING:
            return False, None, f"{len(value)} characters, more than {MAX_STRING}"
        return True, value, ""
    if kind == "int":
        if isinstance(value, bool):
            return False, None, ""
        if isinstance(value, int):
            return True, value, ""
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return False, None, (f"a number written with a decimal point or exponent is not "
                                 f"an integer, even with an integral value: send {int(value)}")
        return False, None, ""
    if kind == "double":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, None, ""
        try:
            number = float(value)
        except OverflowError:
            return False, None, "too large for a double"
        if not math.isfinite(number):
            return False, None, "NaN and infinities are not accepted"
        return True, number, ""
    if kind == "boolean":
        return isinstance(value, bool), value if isinstance(value, bool) else None, ""
    if isinstance(value, str) and value in field["choices"]:
        return True, value, ""
    return False, None, ""


def _describe(field: dict[str, Any]) -> str:
    kind = field["type"]
    if kind == "choice":
        return "one of " + ", ".join(json.dumps(c) for c in field["choices"])
    return {"string": f"a string of at most {MAX_STRING} characters", "int": "an integer",
            "double": "a finite number", "boolean": "true or false"}[kind]


def _show(value: Any, limit: int = 60) -> str:
    """A short JSON rendering of a value for messages (long strings cut)."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _list(names: list[Any]) -> str:
    shown = ", ".join(_show(n, 40) if not isinstance(n, str) or not FIELD_NAME.match(n) else n
                      for n in names[:_MAX_LISTED])
    extra = len(names) - _MAX_LISTED
    return shown + (f" and {extra} more" if extra > 0 else "")


def _fields_detail(names: list[Any]) -> dict[str, Any]:
    """details: fields (all the names concerned, at most 100) and field when just one."""
    names = [str(n) for n in names][:100]
    return {"field": names[0], "fields": names} if len(names) == 1 else {"fields": names}
