"""Flow: actors that shape the stream of tokens in time and number (Sleep, Repeat, SampleDelay)."""

from __future__ import annotations

from typing import Any

from kree.engine import expression
from kree.engine.model import Actor, ParamSpec, Port, PortSpec, WorkflowError


def _count(actor: Actor, name: str, minimum: int) -> int:
    value = actor.param(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise actor.fail(f"{name} must be an integer of at least {minimum}, not "
                         f"{expression.to_string(value)}")
    return int(value)


class Sleep(Actor):
    """
    Waits sleepTime milliseconds on each firing, then passes on the tokens it
    received.  A stop request ends the wait at once.

    Ports: input (multiport), output (multiport: the token of input channel i
    goes to output channel i).
    Parameters: sleepTime (milliseconds, default 0L).
    """

    class_name = "ptolemy.actor.lib.Sleep"
    ports = (PortSpec("input", input=True, multiport=True),
             PortSpec("output", output=True, multiport=True))
    parameters = (ParamSpec("sleepTime", "0L"),)

    def _milliseconds(self) -> float:
        value = self.param("sleepTime")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise self.fail(f"sleepTime must be a non-negative number of milliseconds, not "
                            f"{expression.to_string(value)}")
        return float(value)

    def initialize(self) -> None:
        super().initialize()
        self._milliseconds()

    def fire(self) -> None:
        milliseconds = self._milliseconds()
        if milliseconds > 0:
            self.context.sleep(milliseconds / 1000.0)  # StopRequested passes through
        port, output = self.input("input"), self.output("output")
        for channel in range(port.width):
            if port.has_token(channel):
                output.send(channel, port.get(channel))


class Repeat(Actor):
    """
    Repeats each block of blockSize input tokens numberOfTimes times
    (a, b -> a, b, a, b for blockSize 2 and numberOfTimes 2).

    Ports: input (SDF: consumes blockSize tokens per firing), output
    (produces numberOfTimes * blockSize).
    Parameters: numberOfTimes (default 2), blockSize (default 1).
    """

    class_name = "ptolemy.domains.sdf.lib.Repeat"
    ports = (PortSpec("input", input=True), PortSpec("output", output=True))
    parameters = (ParamSpec("numberOfTimes", "2"), ParamSpec("blockSize", "1"))

    def rate(self, port: Port) -> int:
        # Asked while scheduling, before initialize: a bad parameter falls
        # back to 1 here and fails the run in initialize.
        try:
            times, block = _count(self, "numberOfTimes", 1), _count(self, "blockSize", 1)
        except WorkflowError:
            return port.spec.rate
        if port.name == "input":
            return block
        if port.name == "output":
            return times * block
        return port.spec.rate

    def initialize(self) -> None:
        super().initialize()
        _count(self, "numberOfTimes", 1)
        _count(self, "blockSize", 1)

    def fire(self) -> None:
        times, block = _count(self, "numberOfTimes", 1), _count(self, "blockSize", 1)
        port = self.input("input")
        if not port.has_token(0, block):
            raise self.fail(f"needs {block} tokens on input, has {port.available(0)}")
        tokens = [port.get(0) for _ in range(block)]
        output = self.output("output")
        for _ in range(times):
            for token in tokens:
                output.broadcast(token)


class SampleDelay(Actor):
    """
    Produces initialOutputs when the run starts, then passes each input
    token on: a delay of len(initialOutputs) tokens.  It is what makes a
    feedback loop schedulable under SDF.

    Ports: input, output.
    Parameters: initialOutputs (an array, default {0}).
    """

    class_name = "ptolemy.domains.sdf.lib.SampleDelay"
    ports = (PortSpec("input", input=True), PortSpec("output", output=True))
    parameters = (ParamSpec("initialOutputs", "{0}"),)

    def _initial(self) -> list[Any]:
        value = self.param("initialOutputs")
        if not isinstance(value, list):
            raise self.fail(f"initialOutputs must be an array, not {expression.to_string(value)}")
        return value

    def initial_tokens(self, port: Port) -> int:
        if port.name != "output":
            return 0
        try:
            return len(self._initial())
        except WorkflowError:
            return 0  # reported when the run starts

    def initialize(self) -> None:
        super().initialize()
        output = self.output("output")
        for value in self._initial():
            output.broadcast(value)

    def fire(self) -> None:
        port = self.input("input")
        if port.has_token(0):
            self.output("output").broadcast(port.get(0))
