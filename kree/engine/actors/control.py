"""Control: actors that end the run (Stop, Fail)."""

from __future__ import annotations

from kree.engine import expression
from kree.engine.model import Actor, ParamSpec, PortSpec

INPUT = PortSpec("input", input=True, multiport=True)


class Stop(Actor):
    """
    Ends the run when it reads a true token on any input channel.

    Ports: input (multiport, booleans; when nothing is connected, the first
    firing stops the run).
    Under SDF the current iteration is completed, then the run ends normally
    (also with iterations 0, which otherwise runs without end).  Under PN the
    Stop actor finishes; the run ends when the other actors run out of data,
    so design PN workflows to starve instead (as Ptolemy advises).
    """

    class_name = "ptolemy.actor.lib.Stop"
    ports = (INPUT,)

    def postfire(self) -> bool:
        super().postfire()
        port = self.input("input")
        stop = port.width == 0
        for channel in range(port.width):
            if port.has_token(channel):
                value = port.get(channel)
                if not isinstance(value, bool):
                    raise self.fail(f"input expects booleans, got {expression.to_string(value)}")
                stop = stop or value
        return not stop


class Fail(Actor):
    """
    Fails the run on purpose when a token arrives, with message and the
    token as the reason; with no input connected, on its first firing.

    Ports: input (multiport, optional).
    Parameters: message (string, default "failed on purpose").
    """

    class_name = "kree.actor.Fail"
    ports = (INPUT,)
    parameters = (ParamSpec("message", "failed on purpose", string=True),)

    def _message(self) -> str:
        message = self.param("message")
        return message if isinstance(message, str) else expression.display(message)

    def fire(self) -> None:
        port = self.input("input")
        if port.width == 0:
            raise self.fail(self._message())
        for channel in range(port.width):
            if port.has_token(channel):
                token = port.get(channel)
                raise self.fail(f"{self._message()}: {expression.display(token)}")
