"""Sinks: actors that consume tokens (Display, Recorder, FileWriter, LineWriter, Discard, Test)."""

from __future__ import annotations

import math

from kree.engine import expression
from kree.engine.model import Actor, ParamSpec, PortSpec

INPUT = PortSpec("input", input=True, multiport=True)


class Display(Actor):
    """
    Shows each token it receives as a job message (as Ptolemy's Display
    shows it: strings without quotes).

    Ports: input (multiport).
    Parameters: title (string, ignored: there is no window).
    """

    class_name = "ptolemy.actor.lib.gui.Display"
    ports = (INPUT,)
    parameters = (ParamSpec("title", "", string=True),)

    def fire(self) -> None:
        port = self.input("input")
        for channel in range(port.width):
            while port.has_token(channel):
                self.context.message(self.full_name, expression.display(port.get(channel)))


class Recorder(Display):
    """
    Records each token as a job message, as Ptolemy's Recorder records it
    (strings quoted).

    Ports: input (multiport).
    """

    class_name = "ptolemy.actor.lib.Recorder"
    parameters = ()

    def fire(self) -> None:
        port = self.input("input")
        for channel in range(port.width):
            while port.has_token(channel):
                self.context.message(self.full_name, expression.to_string(port.get(channel)))


class Discard(Actor):
    """
    Consumes and ignores every token.

    Ports: input (multiport).
    """

    class_name = "ptolemy.actor.lib.Discard"
    ports = (INPUT,)

    def fire(self) -> None:
        port = self.input("input")
        for channel in range(port.width):
            while port.has_token(channel):
                port.get(channel)


class LineWriter(Actor):
    """
    Writes each token as one line of a product file (strings without quotes).

    Ports: input.
    Parameters: fileName (string, the product's name, default output.txt),
    append (default false), confirmOverwrite (ignored).
    """

    class_name = "ptolemy.actor.lib.io.LineWriter"
    ports = (PortSpec("input", input=True),)
    parameters = (ParamSpec("fileName", "output.txt", string=True),
                  ParamSpec("append", "false"), ParamSpec("confirmOverwrite", "false"))

    def _name(self) -> str:
        name = self.param("fileName").strip()
        for prefix in ("file:", "$CWD/", "products/"):
            if name.startswith(prefix):
                name = name[len(prefix):]
        return name

    def initialize(self) -> None:
        super().initialize()
        self.path = self.context.product_path(self.full_name, self._name())
        self.file = open(self.path, "a" if self.param("append") else "w", encoding="utf-8")

    def render(self, value) -> str:
        return expression.display(value) + "\n"

    def fire(self) -> None:
        port = self.input("input")
        while port.has_token():
            self.file.write(self.render(port.get()))

    def wrapup(self) -> None:
        file = getattr(self, "file", None)
        if file is not None and not file.closed:
            file.close()
            self.context.product_written(self.full_name, self.path.name)


class FileWriter(LineWriter):
    """
    Writes each token's text to a product file, without adding newlines.

    Ports: input.
    Parameters: fileName (string, default output.txt), append (default false).
    """

    class_name = "ptolemy.actor.lib.io.FileWriter"

    def render(self, value) -> str:
        return expression.display(value)


class Test(Actor):
    """
    Compares each token with the next of correctValues and fails the run on
    the first difference (numbers may differ by tolerance), or when fewer
    tokens arrive than expected.  Self-checking Ptolemy models use it as a test.

    Ports: input (multiport: each channel checked in turn).
    Parameters: correctValues (default {true}), tolerance (default 1.0E-9),
    trainingMode (must be false).
    """

    class_name = "ptolemy.actor.lib.Test"
    ports = (INPUT,)
    parameters = (ParamSpec("correctValues", "{true}"), ParamSpec("tolerance", "1.0E-9"),
                  ParamSpec("trainingMode", "false"), ParamSpec("requireAllCorrectValues", "true"))

    def initialize(self) -> None:
        super().initialize()
        if self.param("trainingMode"):
            raise self.fail("trainingMode is not supported")
        self.expected = self.param("correctValues")
        if not isinstance(self.expected, list):
            raise self.fail("correctValues must be an array")
        self.seen = 0

    def fire(self) -> None:
        port = self.input("input")
        tolerance = self.param("tolerance")
        values = [port.get(channel) for channel in range(port.width) if port.has_token(channel)]
        if port.width > 1:
            values = [values]
        for value in values:
            if self.seen >= len(self.expected):
                raise self.fail(f"received {expression.to_string(value)} after the "
                                f"{len(self.expected)} expected values")
            want = self.expected[self.seen]
            if not _close(value, want, tolerance):
                raise self.fail(f"token {self.seen} is {expression.to_string(value)}, "
                                f"expected {expression.to_string(want)}")
            self.seen += 1

    def wrapup(self) -> None:
        if self.param("requireAllCorrectValues") and self.seen < len(self.expected):
            raise self.fail(f"received {self.seen} of the {len(self.expected)} expected values")


def _close(value, want, tolerance) -> bool:
    if isinstance(value, list) and isinstance(want, list):
        return len(value) == len(want) and all(_close(v, w, tolerance) for v, w in zip(value, want))
    numeric = (int, float)
    if (isinstance(value, numeric) and isinstance(want, numeric)
            and not isinstance(value, bool) and not isinstance(want, bool)):
        if math.isnan(value) and math.isnan(want):
            return True
        return abs(value - want) <= tolerance
    return value == want
