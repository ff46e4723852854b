"""
The runtime model: actors with ports and parameters, connected by channels.

A relation is a hyperedge: every output port linked to it sends each token
to every input channel linked to it.  Each link of a port adds one channel to
it (so a multiport linked twice has width 2).  Composite entities without a
director of their own are transparent: their ports join the relations inside
with the relations outside, and their parameters form a scope that the
expressions inside can name.

L{build} turns a MoML tree into a L{Model}: it finds each actor class in the
registry, applies the admin's actor policy (replace, remove, reject), applies
parameter overrides by full name (C{.model.Ramp.step}), resolves every link,
and reports every problem at once in a L{ValidationError}.
"""

from __future__ import annotations

import collections
import re
from typing import Any, Callable, ClassVar, Iterable

import attrs

from kree.engine import expression
from kree.engine.moml import MEntity, MProperty

COMPOSITE_CLASSES = {
    "ptolemy.actor.TypedCompositeActor",
    "ptolemy.actor.CompositeActor",
    "ptolemy.kernel.CompositeEntity",
}
STRING_PARAMETER_CLASSES = {
    "ptolemy.data.expr.StringParameter",
    "ptolemy.kernel.util.StringAttribute",
    "ptolemy.data.expr.FileParameter",
    "ptolemy.actor.parameters.FilePortParameter",
}


class ValidationError(Exception):
    """The workflow cannot run; C{problems} lists every reason, with full names."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class WorkflowError(Exception):
    """A failure while the workflow runs (the job FAILS with this message)."""

    def __init__(self, message: str, actor: str | None = None) -> None:
        super().__init__(f"{actor}: {message}" if actor else message)
        self.message = message
        self.actor = actor


class StopRequested(Exception):
    """The engine was asked to stop (SIGTERM) while an actor waited."""


@attrs.frozen
class PortSpec:
    name: str
    input: bool = False
    output: bool = False
    multiport: bool = False
    # SDF: tokens consumed (input) or produced (output) per firing and channel.
    rate: int = 1
    doc: str = ""


@attrs.frozen
class ParamSpec:
    name: str
    default: str
    # String mode (Ptolemy's StringParameter): the text is the value, unevaluated.
    string: bool = False
    doc: str = ""
    # It holds code the actor runs (a language actor's script, a command):
    # frontends may not set it unless the admin's policy says so.
    code: bool = False


class Receiver:
    """The queue of one input channel."""

    __slots__ = ("tokens",)

    def __init__(self) -> None:
        self.tokens: collections.deque = collections.deque()


class Hyperedge:
    """A relation, after composites are flattened: where its tokens go."""

    __slots__ = ("name", "receivers", "sources")

    def __init__(self, name: str) -> None:
        self.name = name
        self.receivers: list[Receiver] = []
        self.sources: list[Port] = []


class Port:
    def __init__(self, actor: "Actor", spec: PortSpec) -> None:
        self.actor = actor
        self.spec = spec
        self.name = spec.name
        self.receivers: list[Receiver] = []  # input channels
        self.edges: list[Hyperedge] = []  # output channels

    @property
    def full_name(self) -> str:
        return f"{self.actor.full_name}.{self.name}"

    @property
    def width(self) -> int:
        return len(self.receivers) if self.spec.input else len(self.edges)

    def has_token(self, channel: int = 0, count: int = 1) -> bool:
        return channel < len(self.receivers) and len(self.receivers[channel].tokens) >= count

    def available(self, channel: int = 0) -> int:
        return len(self.receivers[channel].tokens) if channel < len(self.receivers) else 0

    def get(self, channel: int = 0) -> Any:
        if not self.has_token(channel):
            raise WorkflowError(f"no token on channel {channel} of input {self.name}",
                                self.actor.full_name)
        return self.receivers[channel].tokens.popleft()

    def send(self, channel: int, value: Any) -> None:
        if channel < len(self.edges):
            for receiver in self.edges[channel].receivers:
                receiver.tokens.append(value)

    def broadcast(self, value: Any) -> None:
        for edge in self.edges:
            for receiver in edge.receivers:
                receiver.tokens.append(value)


class Parameter:
    """A parameter's text or value, evaluated when asked, in its scope."""

    def __init__(self, name: str, text: str | None, scope: "Scope", *, string: bool = False,
                 value: Any = None, has_value: bool = False) -> None:
        self.name = name
        self.text = text
        self.scope = scope
        self.string = string
        self._value = value
        self._has_value = has_value
        self._evaluating = False

    @property
    def full_name(self) -> str:
        return f"{self.scope.full_name}.{self.name}"

    def set_text(self, text: str) -> None:
        self.text, self._has_value = text, False

    def set_value(self, value: Any) -> None:
        self._value, self._has_value = value, True

    def value(self) -> Any:
        if self._has_value:
            return self._value
        if self.string:
            return self._substitute(self.text or "")
        if self._evaluating:
            raise WorkflowError(f"parameter {self.name} refers to itself", self.scope.full_name)
        text = (self.text or "").strip()
        if not text:
            return None
        self._evaluating = True
        try:
            value = expression.evaluate_text(text, self.scope.lookup_excluding(self.name))
        except expression.ExpressionError as e:
            raise WorkflowError(f"parameter {self.name} = {text!r}: {e}",
                                self.scope.full_name) from None
        finally:
            self._evaluating = False
        self._value, self._has_value = value, True
        return value


    def _substitute(self, text: str) -> str:
        """
        Ptolemy's string mode: $name and ${name} become the value of that
        parameter in scope (as Display shows it), $$ becomes $; a name that
        is not a parameter ($CWD, $HOME, ...) is left as written.
        """
        if "$" not in text:
            return text
        lookup = self.scope.lookup_excluding(self.name)

        def replace(match: re.Match) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1) or match.group(2)
            try:
                return expression.display(lookup(name))
            except KeyError:
                return match.group(0)

        return _DOLLAR.sub(replace, text)


_DOLLAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class Scope:
    """Parameters by name, falling back to the enclosing scope (Ptolemy's rule)."""

    def __init__(self, full_name: str, parent: "Scope | None") -> None:
        self.full_name = full_name
        self.parent = parent
        self.parameters: dict[str, Parameter] = {}

    def lookup(self, name: str) -> Any:
        scope = self
        while scope is not None:
            if name in scope.parameters:
                return scope.parameters[name].value()
            scope = scope.parent
        raise KeyError(name)

    def lookup_excluding(self, own: str) -> Callable[[str], Any]:
        """A lookup for parameter C{own}'s expression: a name equal to its own refers outward."""

        def lookup(name: str) -> Any:
            if name == own:
                if self.parent is None:
                    raise KeyError(name)
                return self.parent.lookup(name)
            return self.lookup(name)

        return lookup


class Actor:
    """
    The base of every actor.  Subclasses declare C{class_name} (as named in
    Ptolemy II or Kepler), C{ports} and C{parameters}, and override the
    action methods: initialize, prefire, fire, postfire, wrapup.  Inputs are
    read with C{self.input(name).get(channel)}, outputs written with
    C{self.output(name).broadcast(value)}, parameters with
    C{self.param(name)}.  C{self.context} reports messages and products and
    asks the user for input.
    """

    class_name: ClassVar[str] = ""
    ports: ClassVar[tuple[PortSpec, ...]] = ()
    parameters: ClassVar[tuple[ParamSpec, ...]] = ()
    # Third-party software the actor needs (names in kree.engine.software):
    # all of `software`, and one of `software_any` when that is not empty.
    software: ClassVar[tuple[str, ...]] = ()
    software_any: ClassVar[tuple[str, ...]] = ()
    # The package that provides the class (filled in by the registry).
    package: ClassVar[str] = "kree"

    def __init__(self, name: str, full_name: str, scope: Scope, context) -> None:
        self.name = name
        self.full_name = full_name
        self.scope = scope
        self.context = context
        self.port_map: dict[str, Port] = {spec.name: Port(self, spec) for spec in self.ports}
        self.firings = 0

    # -- helpers for actors -------------------------------------------------

    def param(self, name: str) -> Any:
        return self.scope.parameters[name].value()

    def input(self, name: str) -> Port:
        return self.port_map[name]

    def output(self, name: str) -> Port:
        return self.port_map[name]

    def fail(self, message: str) -> WorkflowError:
        return WorkflowError(message, self.full_name)

    def inputs(self) -> Iterable[Port]:
        return (p for p in self.port_map.values() if p.spec.input)

    def outputs(self) -> Iterable[Port]:
        return (p for p in self.port_map.values() if p.spec.output)

    # -- action methods ------------------------------------------------------

    def initialize(self) -> None:
        self.firings = 0

    def prefire(self) -> bool:
        return True

    def fire(self) -> None:
        pass

    def postfire(self) -> bool:
        self.firings += 1
        return True

    def wrapup(self) -> None:
        pass

    # -- scheduling ------------------------------------------------------------

    def rate(self, port: Port) -> int:
        """SDF tokens per firing on each channel of C{port}."""
        return port.spec.rate

    def initial_tokens(self, port: Port) -> int:
        """Tokens this actor puts on each channel of C{port} in initialize (SampleDelay)."""
        return 0

    def ready(self) -> bool:
        """
        PN: can this actor fire now?  By default, when every connected input
        channel holds enough tokens for one firing.
        """
        return all(
            port.has_token(channel, self.rate(port))
            for port in self.inputs()
            for channel in range(port.width)
        )


class Source(Actor):
    """An actor with no inputs that may stop after C{firingCountLimit} firings."""

    parameters = (ParamSpec("firingCountLimit", "NONE",
                            doc="stop after this many firings (NONE or 0: never)"),)

    def postfire(self) -> bool:
        super().postfire()
        limit = self.firing_limit()
        return not (limit and self.firings >= limit)

    def firing_limit(self) -> int | None:
        text = (self.scope.parameters["firingCountLimit"].text or "").strip()
        if text in ("", "NONE"):
            return None
        value = self.param("firingCountLimit")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.fail("firingCountLimit must be NONE or a non-negative integer")
        return value or None


def all_parameters(cls: type[Actor]) -> dict[str, ParamSpec]:
    """Parameters declared by C{cls} and its bases (subclass wins)."""
    specs: dict[str, ParamSpec] = {}
    for klass in reversed(cls.__mro__):
        for spec in getattr(klass, "__dict__", {}).get("parameters", ()):
            specs[spec.name] = spec
    return specs


@attrs.define
class DirectorSpec:
    class_name: str
    full_name: str
    scope: Scope


@attrs.define
class Model:
    name: str
    director: DirectorSpec
    actors: list[Actor]
    top_scope: Scope
    # Policy replacements and removals, as job messages (full name, text).
    policy_messages: list[tuple[str, str]]
    # Every scope by full name: the model, its director, composites, actors.
    scopes: dict[str, Scope]

    def parameter_table(self) -> list[dict[str, Any]]:
        """
        Every settable parameter with its default text (for `params`); one of
        an actor also names the actor's class and whether it holds code the
        actor runs (kree.jobs refuses to let frontends set such a one).
        """
        actors = {actor.full_name: actor for actor in self.actors}
        table = []
        for scope in self.scopes.values():
            actor = actors.get(scope.full_name)
            for p in scope.parameters.values():
                row = {"name": p.full_name, "default": p.text, "string": p.string}
                if actor is not None:
                    spec = next((s for s in type(actor).parameters if s.name == p.name), None)
                    row.update(actor_class=actor.class_name, attribute=p.name,
                               code=bool(spec is not None and spec.code))
                table.append(row)
        return table


# -- building ---------------------------------------------------------------------


class _Builder:
    def __init__(self, registry, policy: dict[str, str], context) -> None:
        self.registry = registry
        self.policy = policy
        self.context = context
        self.problems: list[str] = []
        self.policy_messages: list[tuple[str, str]] = []
        self.actors: dict[str, Actor] = {}  # by full name
        self.composites: dict[str, tuple[MEntity, Scope]] = {}
        self.removed: set[str] = set()

    def build(self, top: MEntity) -> Model:
        if top.director is None:
            self.problems.append(f"{top.full_name}: no director (an SDF or PN director is needed)")
        top_scope = Scope(top.full_name, None)
        self._scope_parameters(top_scope, top.properties)
        director = None
        if top.director is not None:
            director_full_name = f"{top.full_name}.{top.director.name}"
            if not self.registry.is_director(top.director.class_name):
                self.problems.append(
                    f"{director_full_name}: unknown director class {top.director.class_name!r} "
                    f"(supported: {', '.join(self.registry.directors())})")
            director_scope = Scope(director_full_name, top_scope)
            for name, default in self.registry.director_parameters(
                    top.director.class_name or "").items():
                director_scope.parameters[name] = Parameter(name, default, director_scope)
            self._scope_parameters(director_scope, top.director.properties)
            director = DirectorSpec(top.director.class_name or "", director_full_name, director_scope)
        self.composites[top.full_name] = (top, top_scope)
        self._entities(top, top_scope)
        self._links()
        if self.problems:
            raise ValidationError(self.problems)
        scopes = {top_scope.full_name: top_scope, director.full_name: director.scope}
        scopes.update({name: scope for name, (_, scope) in self.composites.items()})
        scopes.update({name: actor.scope for name, actor in self.actors.items()})
        return Model(top.name, director, list(self.actors.values()), top_scope,
                     self.policy_messages, scopes)

    def _scope_parameters(self, scope: Scope, properties: dict[str, MProperty]) -> None:
        for prop in properties.values():
            if prop.value is not None or prop.class_name in STRING_PARAMETER_CLASSES:
                scope.parameters[prop.name] = Parameter(
                    prop.name, prop.value, scope,
                    string=prop.class_name in STRING_PARAMETER_CLASSES)

    def _entities(self, container: MEntity, scope: Scope) -> None:
        for entity in container.entities.values():
            if entity.entities or entity.relations or entity.class_name in COMPOSITE_CLASSES:
                if entity.director is not None:
                    self.problems.append(
                        f"{entity.full_name}: composites with a director of their own are not "
                        "supported in this version")
                    continue
                inner = Scope(entity.full_name, scope)
                self._scope_parameters(inner, entity.properties)
                self.composites[entity.full_name] = (entity, inner)
                self._entities(entity, inner)
            else:
                self._actor(entity, scope)

    def _actor(self, entity: MEntity, scope: Scope) -> None:
        class_name = entity.class_name or ""
        rule = self.policy.get(class_name, "allow")
        if rule == "reject":
            self.problems.append(
                f"{entity.full_name}: actor class {class_name} is not allowed on this server")
            return
        if rule == "remove":
            self.removed.add(entity.full_name)
            self.policy_messages.append(
                (entity.full_name, f"removed {entity.full_name} ({class_name}): not allowed on "
                                   "this server"))
            return
        if rule.startswith("replace:"):
            replacement = rule.split(":", 1)[1]
            self.policy_messages.append(
                (entity.full_name, f"replaced {entity.full_name} ({class_name}) by {replacement}"))
            class_name = replacement
        cls = self.registry.actor_class(class_name)
        if cls is None:
            self.problems.append(f"{entity.full_name}: unknown actor class {class_name!r}")
            return
        missing = [name for name in cls.software if not self.context.has_software(name)]
        if cls.software_any and not any(self.context.has_software(n) for n in cls.software_any):
            missing.append(" or ".join(cls.software_any))
        if missing:
            self.problems.append(
                f"{entity.full_name}: needs {', '.join(missing)}, which is not installed here")
        actor_scope = Scope(entity.full_name, scope)
        specs = all_parameters(cls)
        for spec in specs.values():
            actor_scope.parameters[spec.name] = Parameter(spec.name, spec.default, actor_scope,
                                                          string=spec.string)
        for prop in entity.properties.values():
            if prop.name in actor_scope.parameters:
                if prop.value is not None:
                    actor_scope.parameters[prop.name].set_text(prop.value)
            elif prop.value is not None or prop.class_name in STRING_PARAMETER_CLASSES:
                actor_scope.parameters[prop.name] = Parameter(
                    prop.name, prop.value, actor_scope,
                    string=prop.class_name in STRING_PARAMETER_CLASSES)
        actor = cls(entity.name, entity.full_name, actor_scope, self.context)
        # Ports declared in the file that the class does not have (user-added
        # ports, e.g. the inputs of an Expression) are created as declared.
        for port in entity.ports.values():
            if port.name not in actor.port_map and (port.input or port.output):
                actor.port_map[port.name] = Port(
                    actor, PortSpec(port.name, port.input, port.output, port.multiport))
        self.actors[entity.full_name] = actor

    # -- links ---------------------------------------------------------------

    def _links(self) -> None:
        parent: dict[str, str] = {}

        def find(node: str) -> str:
            parent.setdefault(node, node)
            while parent[node] != node:
                parent[node] = parent[parent[node]]
                node = parent[node]
            return node

        def union(a: str, b: str) -> None:
            parent[find(a)] = find(b)

        port_links: list[tuple[Port, str]] = []
        for full_name, (entity, _) in self.composites.items():
            for relation in entity.relations:
                find(f"R{full_name}.{relation}")
            for link in entity.links:
                if link.relation1:
                    nodes = []
                    for rel in (link.relation1, link.relation2):
                        if rel not in entity.relations:
                            self.problems.append(f"{full_name}: link to unknown relation {rel!r}")
                        nodes.append(f"R{full_name}.{rel}")
                    if len(nodes) == 2:
                        union(*nodes)
                    continue
                if link.relation not in entity.relations:
                    self.problems.append(
                        f"{full_name}: link of {link.port!r} to unknown relation {link.relation!r}")
                    continue
                relation = f"R{full_name}.{link.relation}"
                target = self._port_target(entity, full_name, link.port)
                if target is None:
                    continue
                if isinstance(target, str):
                    union(target, relation)  # a composite's port joins inside and outside
                else:
                    port_links.append((target, relation))

        edges: dict[str, Hyperedge] = {}
        for port, node in port_links:
            root = find(node)
            edge = edges.setdefault(root, Hyperedge(root[1:]))
            if port.spec.output:
                port.edges.append(edge)
                edge.sources.append(port)
            if port.spec.input:
                receiver = Receiver()
                port.receivers.append(receiver)
                edge.receivers.append(receiver)
        for edge in edges.values():
            if len(edge.sources) > 1:
                names = ", ".join(p.full_name for p in edge.sources)
                self.problems.append(f"relation {edge.name} has more than one source: {names}")
        for actor in self.actors.values():
            for port in actor.port_map.values():
                if (port.spec.input and not port.spec.multiport and len(port.receivers) > 1) or (
                        port.spec.output and not port.spec.multiport and len(port.edges) > 1):
                    self.problems.append(f"{port.full_name}: linked {port.width} times, "
                                         "but it is not a multiport")

    def _port_target(self, entity: MEntity, full_name: str, path: str):
        """The atomic port or composite-port node that C{path} names, or None."""
        parts = path.split(".")
        port_name, entity_path = parts[-1], parts[:-1]
        target = entity
        for part in entity_path:
            child = target.entities.get(part)
            if child is None:
                self.problems.append(f"{full_name}: link to {path!r}: no entity {part!r}")
                return None
            target = child
        target_full = target.full_name
        if target_full in self.removed:
            return None  # the policy removed it; its links go with it
        if target_full in self.composites:
            if port_name not in target.ports:
                self.problems.append(f"{full_name}: link to {path!r}: {target_full} has no port "
                                     f"{port_name!r}")
                return None
            return f"P{target_full}.{port_name}"
        actor = self.actors.get(target_full)
        if actor is None:
            return None  # the actor itself was refused; that problem is reported already
        port = actor.port_map.get(port_name)
        if port is None and port_name in actor.scope.parameters:
            # A PortParameter's port (Ramp.step, ...): an input named after the parameter.
            port = actor.port_map[port_name] = Port(actor, PortSpec(port_name, input=True))
        if port is None:
            known = ", ".join(actor.port_map) or "none"
            self.problems.append(f"{full_name}: link to {path!r}: {actor.class_name} has no port "
                                 f"{port_name!r} (ports: {known})")
            return None
        return port


def build(top: MEntity, registry, *, policy: dict[str, str] | None = None,
          overrides: dict[str, Any] | None = None, context=None) -> Model:
    """
    The runnable model of C{top}.

    @param overrides: parameter values by full name; a JSON string is a
        Ptolemy expression (or the text of a string parameter), any other
        JSON value is used as it is.
    @raise ValidationError: with every problem found.
    """
    builder = _Builder(registry, policy or {}, context)
    model = builder.build(top)
    apply_overrides(model, overrides or {})
    return model


def apply_overrides(model: Model, overrides: dict[str, Any]) -> None:
    unknown = []
    for full_name, value in overrides.items():
        owner, _, name = full_name.rpartition(".")
        scope = model.scopes.get(owner)
        if scope is None or name not in scope.parameters:
            unknown.append(full_name)
            continue
        parameter = scope.parameters[name]
        if isinstance(value, str):
            parameter.set_text(value)
        else:
            parameter.set_value(value)
    if unknown:
        raise ValidationError([f"unknown parameter {name}" for name in unknown])
