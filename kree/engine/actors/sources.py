"""Sources: actors that produce tokens (Const, Ramp, Pulse, Sequence, StringConst, FileReader)."""

from __future__ import annotations

from kree.engine.model import ParamSpec, PortSpec, Source

TRIGGER = PortSpec("trigger", input=True, multiport=True,
                   doc="optional: one token on each channel per firing")
OUTPUT = PortSpec("output", output=True)


class TriggeredSource(Source):
    """A source that, when its trigger is connected, fires once per trigger token."""

    ports = (TRIGGER, OUTPUT)

    def consume_triggers(self) -> None:
        trigger = self.input("trigger")
        for channel in range(trigger.width):
            if trigger.has_token(channel):
                trigger.get(channel)


class Const(TriggeredSource):
    """
    Produces the value of its parameter on each firing.

    Ports: trigger (input, multiport, optional), output.
    Parameters: value (default 1), firingCountLimit.
    """

    class_name = "ptolemy.actor.lib.Const"
    parameters = (ParamSpec("value", "1"),)

    def fire(self) -> None:
        self.consume_triggers()
        self.output("output").broadcast(self.param("value"))


class Ramp(TriggeredSource):
    """
    Produces init, init + step, init + 2 step, ...

    Ports: trigger (input, optional), output.
    Parameters: init (default 0), step (default 1), firingCountLimit.
    """

    class_name = "ptolemy.actor.lib.Ramp"
    parameters = (ParamSpec("init", "0"), ParamSpec("step", "1"))

    def initialize(self) -> None:
        super().initialize()
        self.state = self.param("init")

    def fire(self) -> None:
        self.consume_triggers()
        self.output("output").broadcast(self.state)

    def postfire(self) -> bool:
        step = self.param("step")
        try:
            self.state = self.state + step
        except TypeError:
            raise self.fail(f"cannot add step {step!r} to {self.state!r}") from None
        return super().postfire()


class Pulse(TriggeredSource):
    """
    Produces values(i) on the firing numbered indexes(i), and zero otherwise.

    Ports: trigger (input, optional), output.
    Parameters: indexes (default {0, 1}), values (default {1, 0}), repeat (default false:
    after the last index only zeros follow; true: start over).
    """

    class_name = "ptolemy.actor.lib.Pulse"
    parameters = (ParamSpec("indexes", "{0, 1}"), ParamSpec("values", "{1, 0}"),
                  ParamSpec("repeat", "false"))

    def fire(self) -> None:
        self.consume_triggers()
        indexes, values = self.param("indexes"), self.param("values")
        if not isinstance(indexes, list) or not isinstance(values, list) or len(indexes) != len(values):
            raise self.fail("indexes and values must be arrays of the same length")
        count = self.firings
        if self.param("repeat") and indexes:
            count %= max(indexes) + 1
        value = values[indexes.index(count)] if count in indexes else _zero(values)
        self.output("output").broadcast(value)


def _zero(values: list):
    sample = values[0] if values else 0
    if isinstance(sample, bool):
        return False
    if isinstance(sample, float):
        return 0.0
    if isinstance(sample, str):
        return ""
    return 0


class Sequence(Source):
    """
    Produces the elements of values in order; then stops, or starts over if repeat.

    Ports: enable (input, optional: a false token skips the firing), output.
    Parameters: values (default {1}), repeat (default false), firingCountLimit.
    """

    class_name = "ptolemy.actor.lib.Sequence"
    ports = (PortSpec("enable", input=True), OUTPUT)
    parameters = (ParamSpec("values", "{1}"), ParamSpec("repeat", "false"))

    def initialize(self) -> None:
        super().initialize()
        self.index = 0

    def fire(self) -> None:
        enable = self.input("enable")
        if enable.width and enable.has_token() and enable.get() is False:
            self.skipped = True
            return
        self.skipped = False
        values = self.param("values")
        if not isinstance(values, list) or not values:
            raise self.fail("values must be a non-empty array")
        self.output("output").broadcast(values[self.index])

    def postfire(self) -> bool:
        more = super().postfire()
        if getattr(self, "skipped", False):
            return more
        self.index += 1
        if self.index >= len(self.param("values")):
            if not self.param("repeat"):
                return False
            self.index = 0
        return more


class StringConst(TriggeredSource):
    """
    Produces its value, a string taken as written (not evaluated).

    Ports: trigger (input, optional), output.
    Parameters: value (string), firingCountLimit.
    """

    class_name = "ptolemy.actor.lib.StringConst"
    parameters = (ParamSpec("value", "", string=True),)

    def fire(self) -> None:
        self.consume_triggers()
        self.output("output").broadcast(self.param("value"))


class FileReader(TriggeredSource):
    """
    Produces the whole text of a file in the job directory (inputs/NAME for a
    staged input).  Paths outside the job directory are refused.

    Ports: trigger (input, optional), output.
    Parameters: fileOrURL (string: a path relative to the job directory), firingCountLimit.
    """

    class_name = "ptolemy.actor.lib.io.FileReader"
    parameters = (ParamSpec("fileOrURL", "", string=True),)

    def fire(self) -> None:
        self.consume_triggers()
        name = self.param("fileOrURL").strip()
        for prefix in ("file:", "$CWD/"):
            if name.startswith(prefix):
                name = name[len(prefix):]
        if not name:
            raise self.fail("fileOrURL is empty")
        path = self.context.resolve_input(self.full_name, name)
        try:
            text = path.read_text("utf-8")
        except OSError as e:
            raise self.fail(f"cannot read {name}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise self.fail(f"{name} is not UTF-8 text") from None
        self.output("output").broadcast(text)
