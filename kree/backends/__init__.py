"""
Execution backends: where engines run.

The supervisor drives every backend through L{Backend}: start an engine for a
prepared job directory, pause, resume, terminate (graceful: SIGTERM, the
engine finishes its firing and exits), kill (forcible, the whole process
tree), deliver an answer to a waiting engine, report usage, and adopt an
engine again after a daemon restart.  A backend reports what the engine does
through L{EngineObserver}: the lines of JOBDIR/events.jsonl in order, with
the count consumed so far, and the engine's exit.

kree.backends.local runs engines as processes on this machine; a batch
system (kree.backends.slurm) implements the same interface.  L{Backend} is
an abstract base class: what every backend must do is abstract, and each
optional capability is declared there with a default, so callers never probe
for one (C{batch}, C{samples_together}, C{on_this_machine}, C{max_jobs},
C{start_service}, C{usage_many}, C{untracked}, C{status}, C{test_submission}).

Each backend is an installed plug-in: the entry point group C{kree.backends}
names its class, and its class says how it is configured (C{config_type},
the C{[backends.<name>]} section) and built (C{from_config});
L{kree.backends.registry} finds and builds them.  No module outside a
backend's own spells its name.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any, Awaitable, Callable, ClassVar, Protocol

import attrs

from kree.records import Job
from kree.sandbox import Sandbox

#: What an engine never inherits of kreed's environment: the ways to reach
#: kreed, or a state directory.
ENGINE_ENV_DROP = ("KREE_STATE_DIR", "KREE_URL", "KREE_CERT", "KREE_KEY", "KREE_CA")


def engine_environment(job: Job, sandbox: Sandbox | None) -> dict[str, str]:
    """
    The environment of a job's engine, on any backend: kreed's, without
    L{ENGINE_ENV_DROP}, with the job's id and, when engines are contained,
    its sandbox and its own temporary directory.
    """
    env = {k: v for k, v in os.environ.items() if k not in ENGINE_ENV_DROP}
    env["KREE_JOB_ID"] = job.id
    env["PYTHONUNBUFFERED"] = "1"
    if sandbox is not None:
        env.update(sandbox.environment(Path(job.job_dir), job.resources or {}))
    return env


class EngineObserver(Protocol):
    async def engine_events(self, job_id: str, lines: list[dict[str, Any]],
                            consumed: int) -> None:
        """New lines of the job's events.jsonl; C{consumed} counts all applied so far."""

    async def engine_started(self, job_id: str, detail: str) -> None:
        """A batch backend's job has started (QUEUED becomes RUNNING)."""

    async def engine_note(self, job_id: str, text: str) -> None:
        """A note for the job's messages (why the batch system keeps it pending)."""

    async def engine_paused(self, job_id: str, reason: str) -> None:
        """The batch system suspended the job itself (an admin's scontrol suspend)."""

    async def engine_resumed(self, job_id: str, reason: str) -> None:
        """The batch system resumed a suspended job itself."""

    async def engine_exited(self, job_id: str, *, ended: bool, adopted: bool,
                            reason: str | None = None) -> None:
        """
        The engine is gone; C{ended}: it wrote its end event before going;
        C{reason}: why the job failed, when the backend knows (a time limit).
        """


@attrs.frozen
class NoSettings:
    """The settings of a backend that has none: an empty C{[backends.<name>]}."""


class Backend(abc.ABC):
    """Where engines run: what the supervisor needs of every backend."""

    #: Its name in configuration, job records and the API ("local"): the
    #: name of its entry point in the C{kree.backends} group.
    name: ClassVar[str]
    #: The attrs class of its C{[backends.<name>]} section.  Every field has
    #: a default; C{enabled: bool} switches it on (unless it is
    #: L{always_enabled}, and then it has no such field), C{job_root: str}
    #: puts its jobs' directories elsewhere.  Field metadata refines the
    #: checks: C{choices} (a tuple), C{positive} (greater than 0), C{path}
    #: (relative to the configuration file).
    config_type: ClassVar[type] = NoSettings
    #: Offered whatever the configuration says (the engines on this machine).
    always_enabled: ClassVar[bool] = False
    #: A top-level section that configured it before C{[backends.<name>]},
    #: still read (with a warning) so that old configuration files work.
    old_section: ClassVar[str | None] = None
    #: Runs engines on this machine: a job's CPUs and memory are checked
    #: against this machine's (a batch system judges its own nodes).
    on_this_machine: ClassVar[bool] = False
    #: Holds jobs pending: a job stays QUEUED after C{start} until the backend
    #: reports L{EngineObserver.engine_started}, and a restart adopts its
    #: QUEUED jobs too.
    batch: ClassVar[bool] = False
    #: Samples all its jobs' usage at once, cheaper than one by one
    #: (L{usage_many}); the supervisor then monitors its jobs together.
    samples_together: ClassVar[bool] = False

    #: How many jobs may be handed to it at once; None: as many as
    #: C{[supervisor] max_running} allows.
    max_jobs: int | None = None

    @classmethod
    def from_config(cls, reactor, observer: EngineObserver, settings: Any,
                    config: Any, sandbox: Sandbox | None = None) -> "Backend":
        """
        The backend, built from its C{settings} (a L{config_type}), the
        whole L{kree.config.Config} and the sandbox its engines run in
        (default: C{cls(reactor, observer, sandbox=sandbox)}).
        """
        return cls(reactor, observer, sandbox=sandbox)

    async def start_service(self) -> None:
        """Awaited once at daemon start, before any job is adopted (default: nothing)."""

    @abc.abstractmethod
    async def start(self, job: Job) -> dict[str, Any]:
        """Start the engine of a prepared job; what the store keeps to find it again."""

    @abc.abstractmethod
    async def adopt(self, job: Job) -> bool:
        """
        Follow the engine of a job again after a restart, from line
        job.events_consumed of its events file.  False if the engine is gone;
        the backend still reports the lines it left and its exit.
        """

    @abc.abstractmethod
    async def pause(self, job: Job) -> None: ...

    @abc.abstractmethod
    async def resume(self, job: Job) -> None: ...

    @abc.abstractmethod
    async def terminate(self, job: Job) -> None:
        """Graceful: the engine finishes its firing and exits."""

    @abc.abstractmethod
    async def kill(self, job: Job) -> None:
        """Forcible: the engine and everything it started."""

    @abc.abstractmethod
    async def answer(self, job: Job, n: int, answer: dict[str, Any]) -> None:
        """Deliver the answer to prompt C{n} of a waiting engine."""

    @abc.abstractmethod
    async def usage(self, job: Job):
        """The job's CPU seconds and memory now (a L{kree.backends.proctree.Usage})."""

    async def usage_many(self, jobs: list[Job]) -> dict[str, Any]:
        """L{usage} of several jobs, by id (default: one by one)."""
        return {job.id: await self.usage(job) for job in jobs}

    @abc.abstractmethod
    async def wait_exited(self, job_id: str) -> None:
        """Returns once the job's engine is gone (at once if it is not running)."""

    @abc.abstractmethod
    async def detach(self) -> None:
        """Stop following every engine and leave it running (daemon shutdown)."""

    def untracked(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """
        Jobs this backend still runs for KREE that it does not follow, by job
        id, each with how to cancel it (default: none).
        """
        return {}

    async def status(self) -> dict[str, Any]:
        """What kree-admin status shows of this backend, besides its job counts."""
        return {}

    @classmethod
    def describe_status(cls, status: dict[str, Any]) -> tuple[str, list[str]]:
        """
        kree-admin status in words, from what L{status} said (in the admin's
        process, which has no backend object): more for the backend's line,
        and lines of its own (default: nothing more).
        """
        return "", []

    async def test_submission(self, resources: dict[str, Any]) -> tuple[str | None, str | None]:
        """
        Whether and when a job with these resources would start, without
        submitting one: (expected start, None), or (None, why it cannot run).
        Default: (None, None), no estimate and no refusal.
        """
        return None, None
