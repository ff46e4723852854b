"""
Find and control every process of one job.

Each job's engine is started in a session and process group of its own with
the environment variable C{KREE_JOB_ID=<job id>}.  The process group or the
parent links alone do not find everything the job started: a descendant may
call setsid() (a new session and group, e.g. C{setsid cmd}, daemonising
tools) and is reparented to init (or a subreaper) when its parent exits, so
it escapes both a process-group kill and a walk of the engine's children.
The environment marker survives both: a child inherits its parent's
environment over fork and exec, so this module finds the job as the union of

  - the engine (the root, identified by pid I{and} create time so that a
    recycled pid is never mistaken for it),
  - the root's descendants (found through parent links, whatever their
    environment), and
  - every process of the current user whose environment (as read from
    /proc/<pid>/environ, i.e. the environment it was exec'ed with) has
    C{KREE_JOB_ID} equal to the job id, together with their descendants.

Limits: a process that clears or rewrites its environment before exec
(C{env -i}, C{env={}}) and has also left the root's tree escapes the marker.
The environment of a non-dumpable process (setuid programs, prctl
PR_SET_DUMPABLE=0) is unreadable to a non-root caller and is skipped.
Processes of other users are never returned and never signalled, nor are the
calling process and its ancestors.  Zombies are never returned: they are
already dead and only wait for their parent.

Everything here is synchronous and slow-ish (it scans /proc): the daemon
calls it from a thread pool, never on the reactor thread.  Processes may
vanish at any moment; that is never an error here.
"""

from __future__ import annotations

import math
import os
import signal
import time
from typing import Any, Iterable

import attrs
import psutil

ENV_VAR = "KREE_JOB_ID"

# How far two create times may differ and still be the same process: psutil
# derives create_time from clock ticks (1/100 s) plus the boot time.
CREATE_TIME_TOLERANCE = 0.01

# Process states that count as stopped for all_stopped().
_STOPPED = frozenset({psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP})
# Process states that are already dead.
_DEAD = frozenset({psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD})

# pause(): at most this many scan-and-stop rounds, and how long each round
# waits for the signalled processes to show as stopped.
PAUSE_ROUNDS = 5
_PAUSE_SETTLE = 0.2
_POLL = 0.01

_GONE = (psutil.NoSuchProcess, psutil.AccessDenied)  # ZombieProcess is a NoSuchProcess


@attrs.frozen
class ProcessRef:
    """What the store keeps to find the engine again."""

    pid: int
    create_time: float

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time}

    @classmethod
    def from_json(cls, data: Any) -> "ProcessRef":
        if not isinstance(data, dict):
            raise ValueError(f"process reference must be an object, not {type(data).__name__}")
        pid = data.get("pid")
        create_time = data.get("create_time")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise ValueError(f"process reference: bad pid {pid!r}")
        if (not isinstance(create_time, (int, float)) or isinstance(create_time, bool)
                or not math.isfinite(create_time)):
            raise ValueError(f"process reference: bad create_time {create_time!r}")
        return cls(pid=pid, create_time=float(create_time))


@attrs.frozen
class Usage:
    cpu_seconds: float
    rss_bytes: int
    processes: int


def ref_for(pid: int) -> ProcessRef:
    """The reference of process C{pid} now; ProcessLookupError if it is gone."""
    try:
        return ProcessRef(pid=pid, create_time=psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        raise ProcessLookupError(pid) from None


def _same_create_time(proc: psutil.Process, ref: ProcessRef) -> bool:
    return abs(proc.create_time() - ref.create_time) <= CREATE_TIME_TOLERANCE


def is_alive(ref: ProcessRef | None) -> bool:
    """Whether the process C{ref} names still runs (same pid and start, not a zombie)."""
    if ref is None or ref.pid <= 0:
        return False
    try:
        proc = psutil.Process(ref.pid)
        return _same_create_time(proc, ref) and proc.status() not in _DEAD
    except _GONE:
        return False


def _key(proc: psutil.Process) -> tuple[int, float]:
    """Identity of a process that survives pid reuse."""
    try:
        return (proc.pid, proc.create_time())
    except _GONE:
        return (proc.pid, 0.0)


def _self_and_ancestors() -> set[int]:
    excluded = {os.getpid()}
    try:
        excluded.update(p.pid for p in psutil.Process().parents())
    except _GONE:
        pass
    return excluded


def job_processes(ref: ProcessRef | None, job_id: str) -> list[psutil.Process]:
    """
    Every live process of the job: the root C{ref} (if alive), all its
    descendants, and every process of the current user marked with
    C{KREE_JOB_ID=job_id} with its descendants.  The root comes first, then
    parents before their children; unrelated subtrees by start time.
    """
    uid = os.getuid()
    excluded = _self_and_ancestors()
    procs: dict[int, psutil.Process] = {}
    parent: dict[int, int] = {}
    starts: set[int] = set()
    root_pid = None
    for pid in psutil.pids():
        if pid == 0:
            continue
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                if proc.uids().real != uid or proc.status() in _DEAD:
                    continue
                ppid = proc.ppid()
                is_root = (ref is not None and pid == ref.pid
                           and _same_create_time(proc, ref))
            if is_root:
                root_pid = pid
                starts.add(pid)
            elif pid not in excluded:
                try:
                    if proc.environ().get(ENV_VAR) == job_id:
                        starts.add(pid)
                except psutil.AccessDenied:
                    pass
        except _GONE:
            continue
        procs[pid] = proc
        parent[pid] = ppid

    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)

    # Everything reachable from the starting points through parent links.
    members: set[int] = set()
    todo = list(starts)
    while todo:
        pid = todo.pop()
        if pid in members:
            continue
        members.add(pid)
        todo.extend(children.get(pid, ()))

    # Order: subtrees whose top has no parent among the members, the root's
    # first, then by start time; each walked parents before children.
    def start_time(pid: int) -> float:
        try:
            return procs[pid].create_time()
        except _GONE:
            return math.inf

    tops = sorted((pid for pid in members if parent[pid] not in members),
                  key=lambda pid: (pid != root_pid, start_time(pid), pid))
    ordered: list[psutil.Process] = []
    queue = list(tops)
    seen: set[int] = set()
    while queue:
        pid = queue.pop(0)
        if pid in seen:
            continue
        seen.add(pid)
        if pid not in excluded:
            ordered.append(procs[pid])
        kids = sorted((c for c in children.get(pid, ()) if c in members),
                      key=lambda c: (start_time(c), c))
        queue.extend(kids)
    return ordered


def _signal(procs: Iterable[psutil.Process], signum: int) -> list[psutil.Process]:
    """Send C{signum} to each process (psutil refuses a recycled pid); those reached."""
    reached = []
    for proc in procs:
        try:
            proc.send_signal(signum)
        except _GONE:
            continue
        reached.append(proc)
    return reached


def _status(proc: psutil.Process) -> str | None:
    """The process's status, or None if it is gone or a zombie."""
    try:
        status = proc.status()
    except _GONE:
        return None
    return None if status in _DEAD else status


def _wait_stopped(procs: list[psutil.Process], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while pending:
        pending = [p for p in pending if _status(p) not in (None, *_STOPPED)]
        if not pending or time.monotonic() >= deadline:
            return
        time.sleep(_POLL)


def pause(ref: ProcessRef | None, job_id: str) -> int:
    """
    SIGSTOP every process of the job.  A process may fork between the scan
    and the signal, so the scan is repeated (at most PAUSE_ROUNDS times)
    until it finds no process that is not stopped.  Returns how many
    distinct processes were sent SIGSTOP.
    """
    stopped: set[tuple[int, float]] = set()
    for _ in range(PAUSE_ROUNDS):
        running = [p for p in job_processes(ref, job_id) if _status(p) not in (None, *_STOPPED)]
        if not running:
            break
        reached = _signal(running, signal.SIGSTOP)
        stopped.update(_key(p) for p in reached)
        _wait_stopped(reached, _PAUSE_SETTLE)
    return len(stopped)


def resume(ref: ProcessRef | None, job_id: str) -> int:
    """SIGCONT every process of the job, children first; returns how many."""
    return len(_signal(reversed(job_processes(ref, job_id)), signal.SIGCONT))


def terminate(ref: ProcessRef | None) -> bool:
    """
    SIGTERM to the root only: the engine stops gracefully and stops its own
    children.  A stopped (paused) engine acts on it only once continued.
    False if the root is not alive.
    """
    if not is_alive(ref):
        return False
    try:
        proc = psutil.Process(ref.pid)
        if not _same_create_time(proc, ref):
            return False
        proc.send_signal(signal.SIGTERM)
    except _GONE:
        return False
    return True


def kill(ref: ProcessRef | None, job_id: str, *, timeout: float = 5.0) -> int:
    """
    SIGKILL every process of the job: each round stops them all first (so
    none can fork any more), then kills them; rescans until none is left or
    C{timeout} seconds have passed.  Works without a root (C{ref} None or
    dead): orphans are found by the environment marker.  Returns how many
    distinct processes were killed.
    """
    deadline = time.monotonic() + timeout
    killed: set[tuple[int, float]] = set()
    while True:
        procs = job_processes(ref, job_id)
        if not procs:
            break
        _signal(procs, signal.SIGSTOP)
        killed.update(_key(p) for p in _signal(procs, signal.SIGKILL))
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL)
    return len(killed)


def all_stopped(ref: ProcessRef | None, job_id: str) -> bool:
    """
    Whether every process of the job is stopped (or in a tracing stop).
    True when the job has no process left.
    """
    for proc in job_processes(ref, job_id):
        status = _status(proc)
        if status is not None and status not in _STOPPED:
            return False
    return True


def usage(ref: ProcessRef | None, job_id: str) -> Usage:
    """
    CPU seconds (user + system, plus the children_user/children_system of
    each process so that children it has waited for count) and resident
    memory summed over the job's live processes.
    """
    cpu = 0.0
    rss = 0
    count = 0
    for proc in job_processes(ref, job_id):
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                memory = proc.memory_info()
        except _GONE:
            continue
        cpu += times.user + times.system + times.children_user + times.children_system
        rss += memory.rss
        count += 1
    return Usage(cpu_seconds=cpu, rss_bytes=rss, processes=count)
