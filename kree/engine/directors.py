"""
Directors: how a model's actors take turns.

SDF (ptolemy.domains.sdf.kernel.SDFDirector): the firing order is computed
from the dataflow graph before the run (balance equations for the rates,
then a simulation that respects the tokens available), and repeated for
C{iterations} iterations (0: until an actor's postfire says stop, or the
engine is stopped).  A cycle without initial tokens (no SampleDelay) cannot
be scheduled and is a validation error naming its actors.

PN (ptolemy.domains.pn.kernel.PNDirector): Kahn process networks without
threads; each round, every actor that can fire (inputs available, see
L{kree.engine.model.Actor.ready}) fires once, until no actor can (the network
is quiescent) or every actor has finished.

Both call wrapup on every actor at the end, whatever happened, and report
progress through the engine context after each firing.
"""

from __future__ import annotations

import math
from fractions import Fraction

from kree.engine.model import Actor, Model, Receiver, ValidationError, WorkflowError

SDF = "ptolemy.domains.sdf.kernel.SDFDirector"
PN = "ptolemy.domains.pn.kernel.PNDirector"


class Director:
    def __init__(self, model: Model, context) -> None:
        self.model = model
        self.context = context

    def param(self, name: str, default):
        parameters = self.model.director.scope.parameters
        if name not in parameters or not (parameters[name].text or "").strip():
            return default
        return parameters[name].value()

    def run(self) -> None:
        """
        Initialize, execute, and wrap up every initialized actor whatever
        happened.  The first failure wins: a wrapup complaint (a Test actor
        missing values) is raised only when the run itself succeeded, so a
        stop stays a stop and a failure keeps its own reason.
        """
        initialized = []
        try:
            for actor in self.model.actors:
                actor.initialize()
                initialized.append(actor)
            self.execute()
        except BaseException:
            self._wrapup(initialized)
            raise
        errors = self._wrapup(initialized)
        if errors:
            raise errors[0]

    @staticmethod
    def _wrapup(actors: list[Actor]) -> list[WorkflowError]:
        errors = []
        for actor in actors:
            try:
                actor.wrapup()
            except WorkflowError as e:
                errors.append(e)
        return errors

    def execute(self) -> None:
        raise NotImplementedError

    def fire(self, actor: Actor) -> bool:
        """One firing of C{actor}; False if it asks not to be fired again."""
        self.context.check_stop()
        if not actor.prefire():
            return True
        actor.fire()
        return actor.postfire()


class SDFDirector(Director):
    def execute(self) -> None:
        iterations = self.param("iterations", 0)
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
            raise WorkflowError("iterations must be a non-negative integer",
                                self.model.director.full_name)
        schedule = sdf_schedule(self.model.actors)
        if not schedule:
            return  # nothing to fire: done (iterations 0 would otherwise spin forever)
        planned = iterations * len(schedule) if iterations else None
        done = 0
        iteration = 0
        keep_going = True
        while keep_going and (not iterations or iteration < iterations):
            for actor in schedule:
                if not self.fire(actor):
                    keep_going = False  # finish this iteration, then stop
                done += 1
                if planned:
                    self.context.progress(done / planned)
            iteration += 1


class PNDirector(Director):
    def execute(self) -> None:
        actors = self.model.actors
        finished: set[int] = set()
        sources = [a for a in actors if not any(p.width for p in a.inputs())]
        limits = [getattr(a, "firing_limit", lambda: None)() for a in sources]
        planned = sum(limits) if sources and all(limits) else None
        while True:
            fired = False
            for actor in actors:
                if id(actor) in finished or not actor.ready():
                    continue
                fired = True
                if not self.fire(actor):
                    finished.add(id(actor))
            if planned:
                self.context.progress(min(1.0, sum(a.firings for a in sources) / planned))
            if not fired:
                return


DIRECTORS = {SDF: SDFDirector, PN: PNDirector}
# Parameters every director of the class has (Ptolemy's defaults); others
# written in the file are kept and ignored.
DIRECTOR_PARAMETERS = {
    SDF: {"iterations": "0"},
    PN: {},
}


def _connections(actors: list[Actor]):
    """(source actor, output port, destination actor, input port) for each channel."""
    owner: dict[int, tuple[Actor, object]] = {}
    for actor in actors:
        for port in actor.inputs():
            for receiver in port.receivers:
                owner[id(receiver)] = (actor, port)
    for actor in actors:
        for port in actor.outputs():
            for edge in port.edges:
                for receiver in edge.receivers:
                    if id(receiver) in owner:
                        destination, in_port = owner[id(receiver)]
                        yield actor, port, destination, in_port, receiver


def sdf_schedule(actors: list[Actor]) -> list[Actor]:
    """
    One SDF iteration: each actor the number of times the balance equations
    require, in an order the available tokens allow.

    @raise ValidationError: inconsistent rates, or a cycle without initial tokens.
    """
    connections = list(_connections(actors))
    neighbours: dict[int, list] = {id(a): [] for a in actors}
    for src, out_port, dst, in_port, _ in connections:
        produced, consumed = src.rate(out_port), dst.rate(in_port)
        neighbours[id(src)].append((dst, Fraction(produced, consumed)))
        neighbours[id(dst)].append((src, Fraction(consumed, produced)))
    repetitions: dict[int, Fraction] = {}
    for start in actors:
        if id(start) in repetitions:
            continue
        component = [start]
        repetitions[id(start)] = Fraction(1)
        todo = [start]
        while todo:
            actor = todo.pop()
            for other, ratio in neighbours[id(actor)]:
                wanted = repetitions[id(actor)] * ratio
                if id(other) not in repetitions:
                    repetitions[id(other)] = wanted
                    component.append(other)
                    todo.append(other)
                elif repetitions[id(other)] != wanted:
                    raise ValidationError([
                        f"SDF rates are inconsistent between {actor.full_name} and "
                        f"{other.full_name}: no number of firings balances their tokens"])
        scale = math.lcm(*(repetitions[id(a)].denominator for a in component))
        counts = [int(repetitions[id(a)] * scale) for a in component]
        divisor = math.gcd(*counts)
        for actor, count in zip(component, counts):
            repetitions[id(actor)] = Fraction(count // divisor)

    # Initial tokens as the actors declare them, so a schedule can be
    # checked (validate) before anything is initialized.
    tokens: dict[int, int] = {}
    for src, out_port, _, _, receiver in connections:
        tokens[id(receiver)] = src.initial_tokens(out_port)
    inputs_of: dict[int, list[tuple[Receiver, int]]] = {id(a): [] for a in actors}
    outputs_of: dict[int, list[tuple[Receiver, int]]] = {id(a): [] for a in actors}
    for src, out_port, dst, in_port, receiver in connections:
        inputs_of[id(dst)].append((receiver, dst.rate(in_port)))
        outputs_of[id(src)].append((receiver, src.rate(out_port)))
    remaining = {id(a): int(repetitions[id(a)]) for a in actors}
    schedule: list[Actor] = []
    while any(remaining.values()):
        progressed = False
        for actor in actors:
            while remaining[id(actor)] and all(
                tokens[id(r)] >= need for r, need in inputs_of[id(actor)]
            ):
                for r, need in inputs_of[id(actor)]:
                    tokens[id(r)] -= need
                for r, made in outputs_of[id(actor)]:
                    tokens[id(r)] += made
                remaining[id(actor)] -= 1
                schedule.append(actor)
                progressed = True
        if not progressed:
            stuck = ", ".join(a.full_name for a in actors if remaining[id(a)])
            raise ValidationError([
                f"the SDF graph deadlocks: a cycle without initial tokens among {stuck} "
                "(put a SampleDelay in the loop)"])
    return schedule
