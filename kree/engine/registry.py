"""
Actor classes by their Ptolemy/Kepler names, and the directors.

Built-in actors live in kree/engine/actors/ (one module per family).  Further
actor libraries install as Python packages that register their classes under
the C{kree.actors} entry point group (the modern form of loading jars into
the server): each entry point names a module (every Actor subclass in it with
a class_name is registered) or a single Actor subclass.  Each class records
the package it came from.

The default policy rejects actors that run arbitrary programs or code
(ExternalExecution, PythonScript) until an admin allows them.
"""

from __future__ import annotations

import importlib
import inspect
from importlib import metadata
from typing import Any

from kree.engine import directors
from kree.engine.model import Actor, all_parameters

BUILTIN_MODULES = (
    "kree.engine.actors.sources",
    "kree.engine.actors.transforms",
    "kree.engine.actors.routing",
    "kree.engine.actors.flow",
    "kree.engine.actors.sinks",
    "kree.engine.actors.control",
    "kree.engine.actors.interaction",
    "kree.engine.actors.external",
)
ENTRY_POINT_GROUP = "kree.actors"

EXTERNAL_EXECUTION = "org.sdm.spa.ExternalExecution"
PYTHON_SCRIPT = "ptolemy.actor.lib.python.PythonScript"
DEFAULT_POLICY = {EXTERNAL_EXECUTION: "reject", PYTHON_SCRIPT: "reject"}


class Registry:
    def __init__(self) -> None:
        self._actors: dict[str, type[Actor]] = {}
        self.load_problems: list[str] = []

    @classmethod
    def default(cls) -> "Registry":
        registry = cls()
        for name in BUILTIN_MODULES:
            registry.add_module(importlib.import_module(name), "kree")
        registry.add_entry_points()
        return registry

    def add_module(self, module, package: str) -> None:
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Actor) and obj.__module__ == module.__name__ and obj.class_name:
                self.add(obj, package)

    def add(self, cls: type[Actor], package: str) -> None:
        if cls.class_name in self._actors:
            self.load_problems.append(
                f"{cls.class_name} from {package} is defined already by "
                f"{self._actors[cls.class_name].package}; keeping the first")
            return
        cls.package = package
        self._actors[cls.class_name] = cls

    def add_entry_points(self) -> None:
        for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
            package = entry.dist.name if entry.dist else entry.name
            try:
                loaded = entry.load()
            except Exception as e:  # a broken plug-in must not break the engine
                self.load_problems.append(f"actor package {package} ({entry.value}): {e}")
                continue
            if inspect.ismodule(loaded):
                self.add_module(loaded, package)
            elif inspect.isclass(loaded) and issubclass(loaded, Actor) and loaded.class_name:
                self.add(loaded, package)
            else:
                self.load_problems.append(
                    f"actor package {package}: {entry.value} is neither a module nor an actor class")

    def actor_class(self, class_name: str) -> type[Actor] | None:
        return self._actors.get(class_name)

    @staticmethod
    def is_director(class_name: str | None) -> bool:
        return class_name in directors.DIRECTORS

    @staticmethod
    def directors() -> list[str]:
        return sorted(directors.DIRECTORS)

    @staticmethod
    def director_parameters(class_name: str) -> dict[str, str]:
        """A director's parameters and their defaults, declared or not in the file."""
        return dict(directors.DIRECTOR_PARAMETERS.get(class_name, {}))

    def describe(self, policy: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every actor class with its package, ports, parameters and policy."""
        policy = {**DEFAULT_POLICY, **(policy or {})}
        return [
            {
                "class": name,
                "package": cls.package,
                "policy": policy.get(name, "allow"),
                "doc": (inspect.getdoc(cls) or "").split("\n\n")[0],
                "ports": [
                    {"name": p.name, "input": p.input, "output": p.output,
                     "multiport": p.multiport}
                    for p in cls.ports
                ],
                "parameters": [
                    {"name": p.name, "default": p.default} for p in all_parameters(cls).values()
                ],
                "software": list(cls.software),
                "software_any": list(cls.software_any),
            }
            for name, cls in sorted(self._actors.items())
        ]


def effective_policy(given: dict[str, str] | None) -> dict[str, str]:
    return {**DEFAULT_POLICY, **(given or {})}
