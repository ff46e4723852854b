"""
The Slurm backend: engines as batch jobs on a Slurm cluster.

A job whose backend is C{slurm} is submitted with C{sbatch --parsable}
(argument lists only) as JOBDIR/slurm-job.sh, a two-line script that execs
C{python -m kree.engine run --no-events-fd JOBDIR} (kree.cwl for a CWL job).  Its name is
C{kree-<job id>}; partition, CPUs, memory and time limit come from the job's
resources; C{--no-requeue}, because a requeued engine would replay its
events.  The job directory must be on a file system that the compute nodes
see at the same path (C{[backends.slurm] job_root}).

Observing.  One C{squeue --states=all --user=<us>} call every
C{[backends.slurm] poll_seconds} observes every KREE job at once, never one call per
job.  Slurm's states map onto KREE's:

    PENDING (and the other waiting states)  QUEUED: the KREE job stays QUEUED
    RUNNING, COMPLETING, ...                 RUNNING (DISPATCH, reason "started by Slurm")
    SUSPENDED, STOPPED                       PAUSED (by KREE, or by an admin in Slurm)
    COMPLETED, FAILED                        the engine's end event decides
    TIMEOUT                                  FAILED "walltime"
    OUT_OF_MEMORY                            FAILED "memory"
    NODE_FAIL, BOOT_FAIL, DEADLINE, ...      FAILED with that reason
    CANCELLED                                ABORTED when KREE asked, else FAILED

A job that has left squeue's view (Slurm forgets finished jobs after
MinJobAge) is looked up with C{sacct} where accounting exists; without it,
the engine's end event decides, and a job without one FAILS.

Events.  There is no pipe across a cluster: the daemon tails JOBDIR/events.jsonl
of every started job every C{[backends.slurm] events_poll_seconds}, from the last line
the store applied.  The engine's C{end} line is held back until Slurm says the
job has ended, so that Slurm's verdict (a time limit, a node failure) wins over
the exit code of an engine that Slurm signalled.  Answers to a WAITING prompt
go as JOBDIR/answers/<n>.json, which the engine watches.

Actions.  Pause: C{scontrol uhold} while pending, else C{scontrol suspend}
(or, with C{pause_method = "signal"}, C{scancel --signal=STOP --full});
resume undoes what pause did.  Stop: C{scancel --batch --signal=TERM} (the
engine finishes its firing), then C{scancel} after the grace period.  Kill:
C{scancel --batch --signal=KILL}, then C{scancel}.

Restart.  Slurm keeps the jobs while kreed is down; on start the backend
re-adopts every job by the Slurm job id in its record and catches up from
its events file.  A job submitted just before a crash, whose id never reached
the store, is found again by its name instead of being submitted twice.
"""

from __future__ import annotations

import json
import math
import os
import pwd
import re
import sys
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import error, protocol
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from kree.backends import Backend, engine_environment
from kree.backends.eventfile import EventTail, write_answer_file
from kree.backends.proctree import Usage
from kree.engines import kind_in
from kree.errors import KreeError
from kree.records import Job
from kree.sandbox import Sandbox
from kree.states import JobState

JOB_NAME_PREFIX = "kree-"
SCRIPT = "slurm-job.sh"

# Slurm job states (squeue %T, sacct State), grouped by what they mean to KREE.
PENDING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                            "RESV_DEL_HOLD", "CONFIGURING"})
STARTED_STATES = frozenset({"RUNNING", "SUSPENDED", "COMPLETING", "SIGNALING", "STAGE_OUT",
                            "RESIZING", "STOPPED"})
FINAL_REASONS = {
    "TIMEOUT": "walltime",
    "OUT_OF_MEMORY": "memory",
    "NODE_FAIL": "node failure (Slurm NODE_FAIL)",
    "BOOT_FAIL": "node boot failure (Slurm BOOT_FAIL)",
    "DEADLINE": "deadline passed (Slurm DEADLINE)",
    "PREEMPTED": "preempted by Slurm",
    "REVOKED": "revoked by Slurm (federation)",
    "SPECIAL_EXIT": "Slurm SPECIAL_EXIT",
}
# The engine's own end event tells how these ended.
ENGINE_DECIDES = frozenset({"COMPLETED", "FAILED"})
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})
# How long Slurm may take to show what our pause or resume did.
SETTLE_SECONDS = 30.0
# A job missing from squeue this many polls in a row has left Slurm's view.
MISSES_BEFORE_GONE = 2


def failure_reason(state: str, *, cancelled_by_us: bool) -> str | None:
    """
    Why a job that Slurm ended in C{state} FAILED, or None where the
    engine's end event decides (COMPLETED, FAILED, or a cancel KREE asked for).
    """
    if state in ENGINE_DECIDES:
        return None
    if state == "CANCELLED":
        return None if cancelled_by_us else "cancelled in Slurm (not by KREE)"
    if state in FINAL_REASONS:
        return FINAL_REASONS[state]
    return f"Slurm ended the job in state {state}"


def sbatch_arguments(job: Job, settings, script: Path) -> list[str]:
    """The sbatch command line for a job: partition, CPUs, memory, time limit."""
    job_dir = Path(job.job_dir)
    args = ["--parsable", f"--job-name={JOB_NAME_PREFIX}{job.id}", f"--chdir={job_dir}",
            f"--output={job_dir / 'engine.log'}", "--open-mode=append", "--no-requeue",
            "--export=ALL", f"--comment=KREE job {job.id}"]
    args += resource_arguments(job.resources or {}, settings)
    args.append(str(script))
    return args


def resource_arguments(resources: dict[str, Any], settings) -> list[str]:
    """sbatch options for a job's resources, then [backends.slurm] sbatch_args."""
    args = []
    partition = resources.get("partition") or settings.partition
    if partition:
        args.append(f"--partition={partition}")
    if resources.get("cpus"):
        args.append(f"--cpus-per-task={resources['cpus']}")
    if resources.get("memory"):
        args.append(f"--mem={max(1, math.ceil(resources['memory'] / 1024**2))}M")
    if resources.get("walltime"):
        # Slurm's limits are whole minutes; kreed's monitor also enforces the
        # exact walltime, so this is the backstop while kreed is down.
        args.append(f"--time={max(1, math.ceil(resources['walltime'] / 60))}")
    args.extend(settings.sbatch_args)
    return args


def parse_test_only(text: str) -> str | None:
    """The start time C{sbatch --test-only} expects ("... to start at T using ...")."""
    m = re.search(r"to start at (\S+)", text)
    return m.group(1) if m else None


# Why a job is pending, in words for the frontend (squeue's %r); the others
# are shown as Slurm says them.
PENDING_WORDS = {
    "Resources": "waiting for free resources",
    "Priority": "other jobs go first",
    "PartitionConfig": "the partition's limits do not allow these resources; it will not "
                       "start unless an administrator changes them",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "ReqNodeNotAvail": "the nodes it needs are not available",
    "QOSMaxJobsPerUserLimit": "the per-user job limit of its QOS is reached",
    "AssocGrpCpuLimit": "its account's CPU limit is reached",
    "BeginTime": "its start time has not come",
    "Dependency": "waiting for another job",
}
QUIET_REASONS = frozenset({"None", "", "JobHeldUser", "JobHeldAdmin"})


def parse_squeue(text: str) -> dict[int, "SlurmView"]:
    """C{squeue --format=%i|%T|%N|%r|%j} output, by Slurm job id (arrays skipped)."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 4)
        if len(parts) != 5 or not parts[0].isdigit():
            continue
        job_id, state, node, reason, name = parts
        out[int(job_id)] = SlurmView(int(job_id), state.split()[0], node, reason, name)
    return out


def parse_sacct(text: str) -> dict[int, "SlurmView"]:
    """C{sacct --parsable2 --format=JobID,State,JobName} output (allocations only)."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        state = parts[1].split()[0] if parts[1] else "UNKNOWN"  # "CANCELLED by 0"
        out[int(parts[0])] = SlurmView(int(parts[0]), state, "", "", parts[2])
    return out


@attrs.frozen
class SlurmConfig:
    """The C{[backends.slurm]} section (formerly C{[slurm]})."""

    # Hand jobs to Slurm (resources.backend = "slurm", or default_backend).
    enabled: bool = False
    # Where Slurm jobs' directories go: a path every compute node sees at the
    # same place.  Empty: <state-dir>/jobs (enough for a single node).
    job_root: str = attrs.field(default="", metadata={"path": True})
    # The Python on the compute nodes that has kree installed; empty: kreed's own.
    python: str = ""
    # Partition for jobs that name none; empty: the cluster's default.
    partition: str = ""
    # Directory of sbatch, squeue, scontrol, scancel and sacct; empty: PATH.
    bin_dir: str = attrs.field(default="", metadata={"path": True})
    # Seconds between the one squeue call that observes every KREE job.
    poll_seconds: float = attrs.field(default=2.0, metadata={"positive": True})
    # Seconds between reads of running jobs' events files.
    events_poll_seconds: float = attrs.field(default=0.5, metadata={"positive": True})
    # "suspend": scontrol suspend/resume (needs a Slurm operator or admin);
    # "signal": scancel --signal=STOP/CONT to the job's processes.
    pause_method: str = attrs.field(default="suspend",
                                    metadata={"choices": ("suspend", "signal")})
    # KREE jobs handed to Slurm at once (pending or running).
    max_jobs: int = attrs.field(default=1000, metadata={"positive": True})
    # More sbatch arguments for every job, e.g. ["--account=physics"].
    sbatch_args: list[str] = attrs.field(factory=list)
    # Seconds to wait for one Slurm command before taking it as failed.
    command_timeout_seconds: float = attrs.field(default=30.0, metadata={"positive": True})


@attrs.frozen
class SlurmView:
    """One job as Slurm shows it."""

    slurm_id: int
    state: str
    node: str
    reason: str
    name: str


class CommandFailed(KreeError):
    pass


class _Command(protocol.ProcessProtocol):
    """One Slurm command: its output, its exit code, killed past a timeout."""

    def __init__(self, reactor, timeout: float) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: Deferred = Deferred()
        self._timer = reactor.callLater(timeout, self._expire)
        self.timed_out = False

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def cancel_timer(self) -> None:
        if self._timer.active():
            self._timer.cancel()

    def _expire(self) -> None:
        self.timed_out = True
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    def processEnded(self, reason) -> None:
        if self._timer.active():
            self._timer.cancel()
        code = getattr(reason.value, "exitCode", None)
        self.done.callback((b"".join(self.out).decode("utf-8", "replace"),
                            b"".join(self.err).decode("utf-8", "replace"),
                            -1 if code is None else code))


@attrs.define
class SlurmJob:
    """A KREE job handed to Slurm, as the backend follows it."""

    job_id: str
    slurm_id: int
    job_dir: Path
    tail: EventTail
    adopted: bool
    submitted_at: float
    # DISPATCH was asked for (Slurm showed the job started).
    started_reported: bool = False
    state: str | None = None
    node: str = ""
    reason: str = ""
    # What our pause did, so that resume undoes just that.
    held: bool = False
    suspended: bool = False
    stopped: bool = False
    cancelled_by_us: bool = False
    reported_consumed: int = 0
    # The pending reason last told the frontend (as a job message).
    reason_told: str = ""
    # When our last action on it was done: squeue output from before that
    # says nothing about what someone else did.
    acted_at: float = -math.inf
    # After our own pause or resume, the state Slurm should come to show (it
    # can lag: STOPPED stays a while after SIGCONT), and until when to wait.
    expect: str | None = None
    expect_until: float = -math.inf
    misses: int = 0
    final_state: str | None = None
    # Lines from the engine's end event on, held back until Slurm's verdict.
    held_lines: list = attrs.field(factory=list)
    done: Deferred = attrs.field(factory=Deferred)


class SlurmBackend(Backend):
    """
    @param settings: the C{[backends.slurm]} section (L{SlurmConfig}).
    """

    name = "slurm"
    batch = True  # jobs stay QUEUED while Slurm holds them pending
    config_type = SlurmConfig
    old_section = "slurm"
    log = Logger()

    @classmethod
    def from_config(cls, reactor, observer, settings: SlurmConfig, config,
                    sandbox: Sandbox | None = None) -> "SlurmBackend":
        return cls(reactor, observer, settings, sandbox=sandbox)

    def __init__(self, reactor, observer, settings: SlurmConfig, *,
                 python: str | None = None, sandbox: Sandbox | None = None) -> None:
        """
        @param sandbox: contains every engine on its node, as far as the node
            allows (kree.sandbox); None: not contained.
        """
        self.sandbox = sandbox
        self.reactor = reactor
        self.observer = observer
        self.settings = settings
        self.max_jobs = settings.max_jobs
        self.python = python or settings.python or sys.executable
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self._threadpool = reactor.getThreadPool()
        self.jobs: dict[str, SlurmJob] = {}
        # Our jobs by name as the last squeue showed them (to find a job
        # whose Slurm id never reached the store).
        self._by_name: dict[str, SlurmView] = {}
        self._views: dict[int, SlurmView] = {}
        self.controller_error: str | None = None
        self.accounting: bool | None = None
        self._running = False
        self._loop: Deferred | None = None
        self._waiter: Deferred | None = None
        self._poll_soon = True
        self._last_poll = -math.inf
        self._paths: dict[str, str] = {}

    # -- plumbing ------------------------------------------------------------------

    def in_thread(self, fn, *args, **kwargs):
        return deferToThreadPool(self.reactor, self._threadpool, fn, *args, **kwargs)

    def _command_path(self, name: str) -> str:
        if name not in self._paths:
            self._paths[name] = self._find_command(name)
        return self._paths[name]

    def _find_command(self, name: str) -> str:
        if self.settings.bin_dir:
            return str(Path(self.settings.bin_dir) / name)
        for directory in os.environ.get("PATH", "").split(os.pathsep):
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        raise CommandFailed(f"{name} is not on the PATH (set [backends.slurm] bin_dir)")

    async def run(self, name: str, *args: str, env: dict[str, str] | None = None,
                  check: bool = True) -> tuple[str, str, int]:
        """Run a Slurm command (an argument list, never a shell)."""
        executable = self._command_path(name)
        command = _Command(self.reactor, self.settings.command_timeout_seconds)
        try:
            self.reactor.spawnProcess(command, executable, [executable, *args],
                                      env=env if env is not None else dict(os.environ))
        except OSError as e:
            command.cancel_timer()
            raise CommandFailed(f"{name} could not start: {e}") from None
        out, err, code = await command.done
        if command.timed_out:
            raise CommandFailed(f"{name} did not answer within "
                                f"{self.settings.command_timeout_seconds:g} s")
        if check and code != 0:
            raise CommandFailed(f"{name} {' '.join(args[:3])}: "
                                f"{(err or out).strip() or f'exit code {code}'}")
        return out, err, code

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.called:
            self._waiter.callback(None)

    def _poll_now(self) -> None:
        self._poll_soon = True
        self._wake()

    # -- the service ---------------------------------------------------------------

    async def start_service(self) -> None:
        """Look at the queue once (for adopt), then follow it."""
        self._running = True
        try:
            await self._poll()
        except Exception:
            self.log.failure("the first look at the Slurm queue failed")
        self._loop = Deferred.fromCoroutine(self._follow())

    async def _follow(self) -> None:
        while self._running:
            try:
                # No KREE job in Slurm: nothing to ask the controller.
                if self._poll_soon or (self.jobs and self.reactor.seconds() - self._last_poll
                                       >= self.settings.poll_seconds):
                    await self._poll()
                await self._read_events()
            except Exception:
                self.log.failure("following the Slurm jobs failed; trying again")
            if not self._running:
                break
            self._waiter = Deferred()
            call = self.reactor.callLater(self.settings.events_poll_seconds, self._wake)
            await self._waiter
            self._waiter = None
            if call.active():
                call.cancel()

    async def detach(self) -> None:
        """Stop following; the jobs go on in Slurm and are re-adopted next start."""
        self._running = False
        self._wake()
        if self._loop is not None:
            await self._loop

    # -- observing -------------------------------------------------------------------

    async def _poll(self) -> None:
        self._poll_soon = False
        started = self.reactor.seconds()
        try:
            out, _, _ = await self.run("squeue", "--noheader", "--states=all",
                                       f"--user={self.user}", "--format=%i|%T|%N|%r|%j")
        except CommandFailed as e:
            if self.controller_error != e.message:
                self.log.warn("Slurm does not answer: {error}", error=e.message)
            self.controller_error = e.message
            return
        self._last_poll = started
        self.controller_error = None
        views = parse_squeue(out)
        self._views = views
        self._by_name = {v.name: v for v in views.values() if v.name.startswith(JOB_NAME_PREFIX)}
        missing = []
        for job in list(self.jobs.values()):
            if job.final_state is not None:
                continue
            view = views.get(job.slurm_id)
            if view is not None and view.name != JOB_NAME_PREFIX + job.job_id:
                view = None  # the id now names someone else's job (ids reused)
            if view is None:
                if job.submitted_at < started:
                    job.misses += 1
                    if job.misses >= MISSES_BEFORE_GONE:
                        missing.append(job)
                continue
            job.misses = 0
            await self._observe(job, view, seen_at=started)
        if missing:
            await self._look_up_gone(missing)

    async def _look_up_gone(self, jobs: list[SlurmJob]) -> None:
        """Jobs squeue no longer shows: sacct knows how they ended, if it exists."""
        found: dict[int, SlurmView] = {}
        if self.accounting is not False:
            try:
                out, _, _ = await self.run(
                    "sacct", "--noheader", "--parsable2", "--allocations",
                    "--jobs=" + ",".join(str(j.slurm_id) for j in jobs),
                    "--format=JobID,State,JobName")
                found = parse_sacct(out)
                self.accounting = True
            except CommandFailed as e:
                if self.accounting is None:
                    self.log.info("no Slurm accounting ({error}): finished jobs are judged "
                                  "by their end events", error=e.message)
                self.accounting = False
        for job in jobs:
            view = found.get(job.slurm_id)
            await self._observe(job, view or SlurmView(job.slurm_id, "GONE", "", "", ""),
                                seen_at=-math.inf)

    async def _observe(self, job: SlurmJob, view: SlurmView, *, seen_at: float) -> None:
        job.state, job.node, job.reason = view.state, view.node, view.reason
        if view.state in PENDING_STATES:
            if view.reason != job.reason_told and view.reason not in QUIET_REASONS:
                job.reason_told = view.reason
                words = PENDING_WORDS.get(view.reason, "Slurm says " + view.reason)
                await self.observer.engine_note(
                    job.job_id, f"pending in Slurm as job {job.slurm_id}: {words}")
            return
        if not job.started_reported and (view.state in STARTED_STATES
                                         or view.state in ENGINE_DECIDES):
            await self._report_started(job)
        if view.state in STARTED_STATES:
            if job.expect is not None and (view.state == job.expect
                                           or self.reactor.seconds() > job.expect_until):
                job.expect = None
            if seen_at > job.acted_at and job.expect is None:
                await self._follow_suspension(job, view)
            return
        job.final_state = view.state
        await self._finish(job)

    async def _report_started(self, job: SlurmJob) -> None:
        """QUEUED becomes RUNNING; refused while KREE has it paused: asked again later."""
        job.started_reported = await self.observer.engine_started(
            job.job_id, f"started by Slurm as job {job.slurm_id}"
                        + (f" on {job.node}" if job.node else ""))

    async def _follow_suspension(self, job: SlurmJob, view: SlurmView) -> None:
        """
        SUSPENDED (scontrol suspend) and STOPPED (SIGSTOP) are PAUSED: when
        someone else suspends or resumes the job in Slurm, KREE follows.
        """
        if view.state == "SUSPENDED" and not job.suspended:
            job.suspended = True
            await self.observer.engine_paused(job.job_id, "suspended in Slurm")
        elif view.state == "STOPPED" and not job.stopped:
            job.stopped = True
            await self.observer.engine_paused(job.job_id, "stopped in Slurm (SIGSTOP)")
        elif view.state == "RUNNING" and (job.suspended or job.stopped):
            job.suspended = job.stopped = False
            await self.observer.engine_resumed(job.job_id, "resumed in Slurm")

    async def _read_events(self) -> None:
        for job in list(self.jobs.values()):
            if job.started_reported and job.final_state is None:
                await self._pass_events(job)

    async def _pass_events(self, job: SlurmJob) -> None:
        """New lines of a running job's events file, up to (not with) its end."""
        lines = await self.in_thread(job.tail.read)
        if job.held_lines:
            job.held_lines.extend(lines)
            return
        for index, line in enumerate(lines):
            if line.get("type") == "end":
                job.held_lines = lines[index:]
                lines = lines[:index]
                break
        if lines:
            consumed = job.tail.consumed - len(job.held_lines)
            await self._apply(job, lines, consumed)

    async def _apply(self, job: SlurmJob, lines: list, consumed: int) -> None:
        """
        Hand lines to the supervisor; if that fails (the database is away),
        read them again next time, from the last count the store took.
        """
        try:
            await self.observer.engine_events(job.job_id, lines, consumed)
        except Exception:
            job.tail = EventTail(job.job_dir / "events.jsonl", job.reported_consumed)
            job.held_lines = []
            raise
        job.reported_consumed = consumed

    async def _finish(self, job: SlurmJob) -> None:
        """Slurm has ended the job: the last events, then Slurm's verdict."""
        state = job.final_state
        reason = None
        if state != "GONE":
            reason = failure_reason(state, cancelled_by_us=job.cancelled_by_us)
        lines = job.held_lines + await self.in_thread(job.tail.read)
        job.held_lines = []
        if not job.started_reported and (lines or job.tail.consumed > job.reported_consumed):
            # It ran (it wrote events) between two looks, or while kreed was down.
            await self._report_started(job)
        if reason is not None:
            # Slurm's verdict wins over the exit code of the engine it signalled.
            lines = [line for line in lines if line.get("type") != "end"]
        elif state == "GONE" and not job.tail.saw_end:
            reason = "the job left the Slurm queue without an end event"
        if lines or job.tail.consumed != job.reported_consumed:
            try:
                await self._apply(job, lines, job.tail.consumed)
            except Exception:
                job.final_state = None  # the next poll tries again
                raise
        ended = job.tail.saw_end and reason is None
        self.log.info("job {job_id}: Slurm job {slurm_id} ended ({state})", job_id=job.job_id,
                      slurm_id=job.slurm_id, state=state)
        if self.jobs.get(job.job_id) is job:
            del self.jobs[job.job_id]
        try:
            await self.observer.engine_exited(job.job_id, ended=ended, adopted=job.adopted,
                                              reason=reason)
        finally:
            job.done.callback(None)

    # -- the Backend interface -----------------------------------------------------------

    def _write_script(self, job_dir: Path, job_id: str) -> Path:
        script = job_dir / SCRIPT
        script.write_text(
            "#!/bin/sh\n"
            f"# KREE job {job_id}, submitted to Slurm by kreed.\n"
            f"{kind_in(job_dir).run_script_line(job_dir, python=self.python)}\n")
        script.chmod(0o700)
        return script

    async def start(self, job: Job) -> dict[str, Any]:
        job_dir = Path(job.job_dir)
        orphan = self._by_name.get(JOB_NAME_PREFIX + job.id)
        if orphan is not None:
            # Submitted before a crash that kept its id from the store.
            slurm_id = orphan.slurm_id
            self.log.info("job {job_id}: found its Slurm job {slurm_id} by name",
                          job_id=job.id, slurm_id=slurm_id)
        else:
            script = await self.in_thread(self._write_script, job_dir, job.id)
            if self.sandbox is not None:
                await self.in_thread(self.sandbox.hand_over, job_dir)
            try:
                out, _, _ = await self.run("sbatch",
                                           *sbatch_arguments(job, self.settings, script),
                                           env=engine_environment(job, self.sandbox))
                first = out.strip().split(";")[0]
                if not first.isdigit():
                    raise CommandFailed(f"sbatch answered {out.strip()!r}, not a job id")
                slurm_id = int(first)
            except CommandFailed:
                # A timeout or a lost answer can hide a job Slurm did accept.
                slurm_id = await self._find_by_name(job.id)
                if slurm_id is None:
                    raise
            self.log.info("job {job_id}: submitted to Slurm as job {slurm_id}",
                          job_id=job.id, slurm_id=slurm_id)
        self.jobs[job.id] = SlurmJob(job.id, slurm_id, job_dir,
                                     EventTail(job_dir / "events.jsonl", job.events_consumed),
                                     adopted=False, submitted_at=self.reactor.seconds(),
                                     reported_consumed=job.events_consumed)
        self._poll_now()
        return {"slurm_job_id": slurm_id}

    async def adopt(self, job: Job) -> bool:
        ref = job.backend_ref if isinstance(job.backend_ref, dict) else {}
        slurm_id = ref.get("slurm_job_id")
        if not isinstance(slurm_id, int):
            raise ValueError(f"backend reference {job.backend_ref!r} has no Slurm job id")
        queued = job.state is JobState.QUEUED or (job.state is JobState.PAUSED
                                                  and job.paused_from is JobState.QUEUED)
        followed = SlurmJob(job.id, slurm_id, Path(job.job_dir),
                            EventTail(Path(job.job_dir) / "events.jsonl", job.events_consumed),
                            adopted=True, submitted_at=-math.inf, started_reported=not queued,
                            reported_consumed=job.events_consumed)
        self.jobs[job.id] = followed
        view = self._views.get(slurm_id)
        if view is not None:
            followed.state = view.state
            followed.held = view.reason in HELD_REASONS
            # Suspended by us before the restart; otherwise the first poll
            # takes it as suspended in Slurm (the job becomes PAUSED).
            followed.suspended = view.state == "SUSPENDED" and job.state is JobState.PAUSED
        self._poll_now()
        return view is not None and (view.state in PENDING_STATES
                                     or view.state in STARTED_STATES)

    async def _find_by_name(self, job_id: str) -> int | None:
        try:
            out, _, _ = await self.run("squeue", "--noheader", "--states=all",
                                       f"--name={JOB_NAME_PREFIX}{job_id}",
                                       "--format=%i|%T|%N|%r|%j")
        except CommandFailed:
            return None
        found = sorted(parse_squeue(out))
        return found[0] if found else None

    def untracked(self) -> dict[str, Any]:
        """
        KREE jobs the first look at the queue showed that are not followed
        (not adopted), unfinished in Slurm: job id -> a coroutine function
        that cancels it.
        """
        strays = {}
        for name, view in self._by_name.items():
            job_id = name[len(JOB_NAME_PREFIX):]
            if job_id in self.jobs or not (view.state in PENDING_STATES
                                           or view.state in STARTED_STATES):
                continue

            async def cancel(slurm_id=view.slurm_id, name=name) -> None:
                await self.run("scancel", f"--name={name}", str(slurm_id), check=False)

            strays[job_id] = cancel
        return strays

    def _followed(self, job: Job) -> SlurmJob | None:
        return self.jobs.get(job.id)

    async def _state_now(self, followed: SlurmJob) -> str | None:
        out, _, _ = await self.run("squeue", "--noheader", "--states=all",
                                   f"--jobs={followed.slurm_id}", "--format=%i|%T|%N|%r|%j",
                                   check=False)
        view = parse_squeue(out).get(followed.slurm_id)
        if view is not None:
            followed.state, followed.reason = view.state, view.reason
        return followed.state

    async def _acting(self, job: Job, step) -> None:
        """Pause or resume; squeue output from before it is done is stale."""
        followed = self._followed(job)
        if followed is None:
            return
        followed.acted_at = math.inf
        try:
            await step(job, followed)
        finally:
            followed.acted_at = self.reactor.seconds()
            followed.expect_until = followed.acted_at + SETTLE_SECONDS
            self._poll_now()

    async def pause(self, job: Job) -> None:
        await self._acting(job, self._pause)

    async def resume(self, job: Job) -> None:
        await self._acting(job, self._resume)

    async def _pause(self, job: Job, followed: SlurmJob) -> None:
        state = await self._state_now(followed)
        if state in PENDING_STATES:
            try:
                await self.run("scontrol", "uhold", str(followed.slurm_id))
                followed.held = True
                return
            except CommandFailed:
                state = await self._state_now(followed)  # it started just now?
                if state not in STARTED_STATES:
                    raise
        if state == "SUSPENDED":
            followed.suspended = True  # already, by someone else
        elif state == "STOPPED":
            followed.stopped = True
        elif state in STARTED_STATES and not (followed.suspended or followed.stopped):
            if self.settings.pause_method == "suspend":
                await self.run("scontrol", "suspend", str(followed.slurm_id))
                followed.suspended, followed.expect = True, "SUSPENDED"
            else:
                await self.run("scancel", "--signal=STOP", "--full", str(followed.slurm_id))
                followed.stopped, followed.expect = True, "STOPPED"

    async def _continue(self, followed: SlurmJob) -> None:
        """Undo a suspend or a SIGSTOP of ours."""
        if followed.suspended or followed.stopped:
            followed.expect = "RUNNING"
        if followed.suspended:
            await self.run("scontrol", "resume", str(followed.slurm_id), check=False)
            followed.suspended = False
        if followed.stopped:
            await self.run("scancel", "--signal=CONT", "--full", str(followed.slurm_id),
                           check=False)
            followed.stopped = False

    async def _resume(self, job: Job, followed: SlurmJob) -> None:
        state = await self._state_now(followed)
        if followed.held or (state in PENDING_STATES and followed.reason in HELD_REASONS):
            await self.run("scontrol", "release", str(followed.slurm_id))
            followed.held = False
        if state == "SUSPENDED":
            followed.suspended = True
        elif state == "STOPPED":
            followed.stopped = True
        await self._continue(followed)
        if job.state is JobState.QUEUED:
            # Resumed into QUEUED: if Slurm started it meanwhile, that is news again.
            followed.started_reported = False

    async def terminate(self, job: Job) -> None:
        followed = self._followed(job)
        if followed is None:
            return
        followed.cancelled_by_us = True
        state = await self._state_now(followed)
        if state in PENDING_STATES:
            await self.run("scancel", f"--name={JOB_NAME_PREFIX}{job.id}",
                           str(followed.slurm_id), check=False)
        else:
            # A suspended or stopped engine cannot act on SIGTERM: continue it first.
            followed.suspended = followed.suspended or state == "SUSPENDED"
            followed.stopped = followed.stopped or state == "STOPPED"
            await self._continue(followed)
            await self.run("scancel", "--batch", "--signal=TERM", str(followed.slurm_id),
                           check=False)
        self._poll_now()

    async def kill(self, job: Job) -> None:
        followed = self._followed(job)
        if followed is None:
            return
        followed.cancelled_by_us = True
        # A cancel (even scancel --signal=KILL) sends SIGTERM first and SIGKILL
        # only after KillWait: the engine would stop gracefully.  Kill means
        # SIGKILL now, to the batch step's processes; the cancel that follows
        # ends whatever else the job has (and a pending job).
        await self.run("scancel", "--batch", "--signal=KILL",
                       f"--name={JOB_NAME_PREFIX}{job.id}", str(followed.slurm_id), check=False)
        await self.run("scancel", f"--name={JOB_NAME_PREFIX}{job.id}", str(followed.slurm_id),
                       check=False)
        self._poll_now()

    async def answer(self, job: Job, n: int, answer: dict[str, Any]) -> None:
        await self.in_thread(write_answer_file, Path(job.job_dir), n,
                             json.dumps(answer).encode() + b"\n")

    async def usage(self, job: Job) -> Usage:
        # Without Slurm's accounting of running steps (sstat) there is no
        # sample of a job's CPU and memory on its compute node.
        return Usage(cpu_seconds=job.cpu_seconds or 0.0, rss_bytes=0, processes=0)

    async def test_submission(self, resources: dict[str, Any]) -> tuple[str | None, str | None]:
        """
        Ask Slurm, without submitting (C{sbatch --test-only}), whether and
        when a job with these resources would start: (expected start, None),
        or (None, Slurm's refusal).
        """
        try:
            out, err, code = await self.run(
                "sbatch", "--test-only", "--job-name=kree-feasibility", "--output=/dev/null",
                *resource_arguments(resources, self.settings), "--wrap=true", check=False)
        except CommandFailed as e:
            return None, e.message
        if code != 0:
            words = [line.split("error: ", 1)[-1] for line in (err or out).strip().splitlines()]
            return None, "; ".join(dict.fromkeys(w for w in words if w)) or f"exit code {code}"
        return parse_test_only(err + out), None

    @classmethod
    def describe_status(cls, status: dict[str, Any]) -> tuple[str, list[str]]:
        """kree-admin status: the controller, and a line per KREE job in Slurm's queue."""
        accounting = {True: "yes", False: "no", None: "not asked yet"}[status["accounting"]]
        asked = status.get("last_poll_seconds_ago")
        more = (f"; controller {status['controller']}"
                + (f" (asked {asked:g} s ago)" if asked is not None else "")
                + f"; pause by {status['pause_method']}; accounting {accounting}")
        lines = [f"  {entry['job']}  Slurm job {entry['slurm_job_id']}  {entry['state'] or '?'}"
                 + (f"  {entry['reason']}" if entry['reason'] not in ("", "None") else "")
                 + (f"  on {entry['node']}" if entry['node'] else "")
                 for entry in status.get("queue", [])]
        return more, lines

    async def wait_exited(self, job_id: str) -> None:
        followed = self.jobs.get(job_id)
        if followed is not None:
            await followed.done

    async def status(self) -> dict[str, Any]:
        """For kree-admin status: the controller, and KREE's jobs in Slurm's queue."""
        return {
            "controller": "unreachable: " + self.controller_error if self.controller_error
            else "up",
            "pause_method": self.settings.pause_method,
            "poll_seconds": self.settings.poll_seconds,
            "accounting": self.accounting,
            "last_poll_seconds_ago": None if self._last_poll == -math.inf
            else round(self.reactor.seconds() - self._last_poll, 1),
            "queue": [
                {"job": j.job_id, "slurm_job_id": j.slurm_id, "state": j.state,
                 "reason": j.reason, "node": j.node}
                for j in sorted(self.jobs.values(), key=lambda j: j.slurm_id)
            ],
        }
