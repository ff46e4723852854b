"""
Routing: actors that send tokens one way or another (BooleanSwitch,
BooleanSelect).

Their token counts depend on the data, so they belong under the PN
director; under SDF every port is counted as one token per firing, which
only works when the data happen to match.
"""

from __future__ import annotations

from typing import Any

from kree.engine import expression
from kree.engine.model import Actor, PortSpec


def _control_value(actor: Actor, value: Any) -> bool:
    if not isinstance(value, bool):
        raise actor.fail(f"control expects booleans, got {expression.to_string(value)}")
    return value


class BooleanSwitch(Actor):
    """
    Routes each input token to trueOutput or falseOutput, as the most recent
    control token says (false until the first control token arrives).

    Ports: input (multiport: channel i goes to channel i of the chosen
    output), control (input, boolean, optional), trueOutput (multiport),
    falseOutput (multiport).
    Under PN it fires when an input token is waiting and a control token is
    waiting too, or one has been read before (or control is not connected);
    each firing reads at most one control token.
    """

    class_name = "ptolemy.actor.lib.BooleanSwitch"
    ports = (PortSpec("input", input=True, multiport=True), PortSpec("control", input=True),
             PortSpec("trueOutput", output=True, multiport=True),
             PortSpec("falseOutput", output=True, multiport=True))

    def initialize(self) -> None:
        super().initialize()
        self.control = False
        self.seen = False

    def ready(self) -> bool:
        port = self.input("input")
        if not any(port.has_token(channel) for channel in range(port.width)):
            return False
        control = self.input("control")
        return control.width == 0 or self.seen or control.has_token(0)

    def fire(self) -> None:
        control = self.input("control")
        if control.width and control.has_token(0):
            self.control = _control_value(self, control.get(0))
            self.seen = True
        port = self.input("input")
        output = self.output("trueOutput" if self.control else "falseOutput")
        for channel in range(port.width):
            if port.has_token(channel):
                output.send(channel, port.get(channel))


class BooleanSelect(Actor):
    """
    Reads a control token, then one token from each channel of trueInput (if
    it is true) or of falseInput (if false), and produces them; tokens on
    the other input wait for a later control token.

    Ports: trueInput (multiport), falseInput (multiport), control (input,
    boolean), output (multiport: channel i of the chosen input goes to
    channel i).
    Under PN it fires when a control token is waiting and the input it
    selects has a token on every channel.
    """

    class_name = "ptolemy.actor.lib.BooleanSelect"
    ports = (PortSpec("trueInput", input=True, multiport=True),
             PortSpec("falseInput", input=True, multiport=True),
             PortSpec("control", input=True),
             PortSpec("output", output=True, multiport=True))

    def initialize(self) -> None:
        super().initialize()
        self.pending: bool | None = None  # a control value read, its input not yet

    def _selected(self, value: bool):
        return self.input("trueInput" if value else "falseInput")

    @staticmethod
    def _complete(port) -> bool:
        return all(port.has_token(channel) for channel in range(port.width))

    def ready(self) -> bool:
        value = self.pending
        if value is None:
            control = self.input("control")
            if not control.has_token(0):
                return False
            value = control.receivers[0].tokens[0]
            if not isinstance(value, bool):
                return True  # fire, so that the bad token fails the run
        return self._complete(self._selected(value))

    def fire(self) -> None:
        if self.pending is None:
            control = self.input("control")
            if not control.has_token(0):
                return
            self.pending = _control_value(self, control.get(0))
        port = self._selected(self.pending)
        if not self._complete(port):
            return  # wait for the selected input (Ptolemy: a later firing)
        self.pending = None
        output = self.output("output")
        for channel in range(port.width):
            output.send(channel, port.get(channel))
