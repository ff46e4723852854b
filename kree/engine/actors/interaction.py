"""Interaction: actors that ask the user (UserInput)."""

from __future__ import annotations

import re
from typing import Any

from kree.engine.actors.sources import TriggeredSource
from kree.engine.model import ParamSpec

FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FIELD_TYPES = ("string", "int", "double", "boolean", "choice")


class UserInput(TriggeredSource):
    """
    Asks the user: puts the job in WAITING with a typed prompt and produces
    the answer when it comes (through the API, the command line, stdin or
    JOBDIR/answers/<n>.json).  The answer is checked against the fields; a
    wrong or incomplete answer fails the job.

    Ports: trigger (input, multiport, optional: when connected, one prompt per
    trigger token), output (a record {name=value, ...} of the answers, or the
    bare value when there is exactly one field).
    Parameters: prompt (string, the question, default "Please answer"),
    fields (an array of records {name=, type=, label=, default=, choices=}:
    name matches [A-Za-z_][A-Za-z0-9_]*, type is "string", "int", "double",
    "boolean" or "choice" (choices, an array of strings, is then required);
    default {{name="value", type="string", label="Value"}}),
    firingCountLimit (default 1: without a connected trigger, prompt this
    many times; NONE or 0: until the run ends; with a trigger connected, the
    trigger tokens decide and the limit is ignored).  There is no timeout
    here: how long a prompt may wait is the supervisor's rule.
    """

    class_name = "kree.actor.UserInput"
    parameters = (
        ParamSpec("prompt", "Please answer", string=True, doc="the question"),
        ParamSpec("fields", '{{name="value", type="string", label="Value"}}',
                  doc="the answers wanted: an array of records {name, type, label, default, "
                      "choices}"),
        ParamSpec("firingCountLimit", "1",
                  doc="prompts without a connected trigger (NONE or 0: until the run ends)"),
    )

    def initialize(self) -> None:
        super().initialize()
        self.fields = self._fields()

    def firing_limit(self) -> int | None:
        if self.input("trigger").width:
            return None  # one prompt per trigger token
        return super().firing_limit()

    def fire(self) -> None:
        self.consume_triggers()
        prompt = {"title": self.param("prompt"), "fields": [dict(f) for f in self.fields]}
        answer = self.context.ask(self.full_name, prompt)
        values = self._check(answer)
        if len(self.fields) == 1:
            self.output("output").broadcast(values[self.fields[0]["name"]])
        else:
            self.output("output").broadcast(values)

    # -- fields ------------------------------------------------------------------

    def _fields(self) -> list[dict[str, Any]]:
        value = self.param("fields")
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.fail("fields must be a non-empty array of records such as "
                            '{{name="value", type="string", label="Value"}}')
        fields, seen = [], set()
        for i, spec in enumerate(value):
            if not isinstance(spec, dict):
                raise self.fail(f"fields element {i} is not a record")
            fields.append(self._field(i, spec, seen))
        return fields

    def _field(self, i: int, spec: dict[str, Any], seen: set[str]) -> dict[str, Any]:
        unknown = sorted(set(spec) - {"name", "type", "label", "default", "choices"})
        if unknown:
            raise self.fail(f"fields element {i}: unknown entries {', '.join(unknown)} "
                            "(name, type, label, default, choices are known)")
        name = spec.get("name")
        if not isinstance(name, str) or not FIELD_NAME.match(name):
            raise self.fail(f"fields element {i}: name must be a string matching "
                            "[A-Za-z_][A-Za-z0-9_]*")
        if name in seen:
            raise self.fail(f"field {name} is declared twice")
        seen.add(name)
        kind = spec.get("type", "string")
        if kind not in FIELD_TYPES:
            raise self.fail(f"field {name}: type must be one of {', '.join(FIELD_TYPES)}, "
                            f"not {kind!r}")
        label = spec.get("label", name)
        if not isinstance(label, str):
            raise self.fail(f"field {name}: label must be a string")
        field: dict[str, Any] = {"name": name, "type": kind, "label": label, "default": None}
        if kind == "choice":
            choices = spec.get("choices")
            if (not isinstance(choices, list) or not choices
                    or not all(isinstance(c, str) for c in choices)):
                raise self.fail(f"field {name}: a choice needs choices, a non-empty array of "
                                "strings")
            field["choices"] = list(choices)
        elif "choices" in spec:
            raise self.fail(f"field {name}: choices are only for type choice")
        if spec.get("default") is not None:
            ok, value = _convert(field, spec["default"])
            if not ok:
                raise self.fail(f"field {name}: the default {spec['default']!r} is not "
                                f"{_describe(field)}")
            field["default"] = value
        return field

    # -- answers -------------------------------------------------------------------

    def _check(self, answer: dict[str, Any]) -> dict[str, Any]:
        if isinstance(answer.get("answers"), dict):
            answer = answer["answers"]
        names = {f["name"] for f in self.fields}
        unknown = sorted(set(answer) - names)
        if unknown:
            raise self.fail(f"the answer has unknown fields {', '.join(unknown)} "
                            f"(expected {', '.join(sorted(names))})")
        values = {}
        for field in self.fields:
            name = field["name"]
            if name not in answer or answer[name] is None:
                if field["default"] is None:
                    raise self.fail(f"the answer gives no value for field {name}")
                values[name] = field["default"]
                continue
            ok, value = _convert(field, answer[name])
            if not ok:
                raise self.fail(f"the answer for field {name} must be {_describe(field)}, "
                                f"not {answer[name]!r}")
            values[name] = value
        return values


def _convert(field: dict[str, Any], value: Any) -> tuple[bool, Any]:
    """(True, the value as the field's type) or (False, None)."""
    kind = field["type"]
    if kind == "string":
        return isinstance(value, str), value
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind == "double":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, None
    if kind == "boolean":
        return isinstance(value, bool), value
    return isinstance(value, str) and value in field["choices"], value


def _describe(field: dict[str, Any]) -> str:
    kind = field["type"]
    if kind == "choice":
        return "one of " + ", ".join(repr(c) for c in field["choices"])
    return {"string": "a string", "int": "an integer", "double": "a number",
            "boolean": "true or false"}[kind]
