"""Example actors registered under the kree.actors entry point."""

from kree.engine.model import Actor, PortSpec


class Shout(Actor):
    """
    Upper-cases each string and adds an exclamation mark.

    Ports: input, output.
    """

    class_name = "org.example.Shout"
    ports = (PortSpec("input", input=True), PortSpec("output", output=True))

    def fire(self) -> None:
        self.output("output").broadcast(str(self.input("input").get()).upper() + "!")
