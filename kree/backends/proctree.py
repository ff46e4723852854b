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
Processes of other users are never returned and never signalled (but those
of the accounts engines run as, C{uids}, when kreed contains them under an
account of their own, kree.sandbox), nor are the calling process and its
ancestors.  Zombies are never returned: they are
already dead and only wait for their parent.

Everything here is synchronous and slow-ish (it scans /proc): the daemon
calls it from a thread pool, never on the reactor thread.  Processes may
vanish at any moment; that is never an error here.

Cost.  A scan (L{ProcessTable.scan}) reads three small files per process of
the machine (stat, status and, for the current user's, environ) and makes
no psutil object for a process that is not in the job: about 10 ms with 300
processes where psutil objects for all took about 50 ms.  L{usage_many}
answers for every job from one scan, so the monitor's round costs one scan,
not one per job.  L{pause} stops a live engine before it scans (the engine
can then fork no more), so its stop does not wait for the scan; the scans
that follow catch everything else, including descendants that setsid'd away.
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

# The units of /proc/<pid>/stat and statm, and the marker in /proc/<pid>/environ.
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_MARK = b"\0" + ENV_VAR.encode() + b"="
# /proc/<pid>/stat states of processes that are already dead (zombie, dead).
_DEAD_STATES = frozenset("ZXx")


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


#: The accounts whose processes may be a job's besides the caller's (None: only its own).
Uids = Iterable[int] | None


def _read(path: str, *, small: bool = True) -> bytes | None:
    """
    The contents of a /proc file, or None if its process is gone.  Raw
    reads, which cost half of what open() does; a C{small} file (stat,
    status, statm: one record) comes whole in one read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        data = os.read(fd, 65536)
        if small:
            return data
        chunks = [data]
        while data:
            data = os.read(fd, 65536)
            chunks.append(data)
        return b"".join(chunks)
    except ProcessLookupError:
        return None
    finally:
        os.close(fd)


def _stat_fields(stat: bytes) -> list[bytes]:
    """The fields of /proc/<pid>/stat after the command name, which is in
    parentheses and may contain anything (so: after the last ")")."""
    return stat[stat.rfind(b")") + 2:].split()


def _create_time(fields: list[bytes], boot_time: float) -> float:
    """From the fields of /proc/<pid>/stat after the command name: psutil's own
    arithmetic, so that references taken with psutil (ref_for) compare equal."""
    return float(fields[19]) / _CLOCK_TICKS + boot_time


def _cpu_ticks(fields: list[bytes]) -> int:
    """utime + stime + cutime + cstime (children the process has waited for count)."""
    return int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])


def _marker(block: bytes) -> str | None:
    """
    The value of KREE_JOB_ID in a raw /proc/<pid>/environ block, read the way
    psutil's environ() reads it: the block ends at a double NUL, an
    unterminated last entry is ignored, and the last assignment wins.
    """
    if block.startswith(b"\0"):
        return None
    end = block.find(b"\0\0")
    if end >= 0:
        block = block[:end + 1]
    last = block.rfind(b"\0")
    if last < 0:
        return None
    block = b"\0" + block[:last + 1]
    at = block.rfind(_MARK)
    if at < 0:
        return None
    start = at + len(_MARK)
    return os.fsdecode(block[start:block.index(b"\0", start)])


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
    # Straight from /proc/<pid>/stat (state and start time in one file), not
    # through a psutil Process: an adopted engine is checked several times a second.
    stat = _read(f"/proc/{ref.pid}/stat")
    if not stat:
        return False
    fields = _stat_fields(stat)
    try:
        return (fields[0].decode() not in _DEAD_STATES
                and abs(_create_time(fields, psutil.boot_time()) - ref.create_time)
                <= CREATE_TIME_TOLERANCE)
    except (IndexError, ValueError):
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


@attrs.frozen
class _Entry:
    """One process as a scan saw it (from /proc/<pid>/stat, status and environ)."""

    pid: int
    ppid: int
    create_time: float
    marker: str | None  # its KREE_JOB_ID, None if unset or unreadable


def _entry(pid: int, uids: frozenset[int], boot_time: float,
           read_environ: bool) -> _Entry | None:
    """
    The process C{pid} if it is alive (not a zombie) and its real user is
    one of C{uids}; None otherwise.  Its environment is read only if
    C{read_environ}.
    """
    base = f"/proc/{pid}/"
    stat = _read(base + "stat")
    if not stat:
        return None
    fields = _stat_fields(stat)
    try:
        if fields[0].decode() in _DEAD_STATES:
            return None
        status = _read(base + "status")
        if not status:
            return None
        uid_at = status.index(b"\nUid:") + 5
        if int(status[uid_at:status.index(b"\n", uid_at)].split()[0]) not in uids:
            return None
        ppid = int(fields[1])
        create_time = _create_time(fields, boot_time)
    except (IndexError, ValueError):
        return None  # a kernel whose files we do not understand: not ours to touch
    marker = None
    if read_environ:
        try:
            block = _read(base + "environ", small=False)
        except PermissionError:
            block = b""  # not dumpable (setuid and the like): no marker to see
        if block is None:
            return None
        marker = _marker(block)
    return _Entry(pid, ppid, create_time, marker)


class ProcessTable:
    """
    One pass over /proc: every live process of the current user with its
    parent, start time and job marker.  Any
    number of jobs are then looked up in it without reading /proc again.
    """

    def __init__(self, entries: dict[int, _Entry], excluded: set[int]) -> None:
        self.entries = entries
        self.excluded = excluded
        self.children: dict[int, list[int]] = {}
        self.marked: dict[str, list[int]] = {}
        for pid, entry in entries.items():
            self.children.setdefault(entry.ppid, []).append(pid)
            if entry.marker is not None and pid not in excluded:
                self.marked.setdefault(entry.marker, []).append(pid)

    @classmethod
    def scan(cls, uids: Uids = None) -> "ProcessTable":
        wanted = _uids(uids)
        excluded = _self_and_ancestors()
        boot_time = psutil.boot_time()
        entries: dict[int, _Entry] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid == 0:
                continue
            entry = _entry(pid, wanted, boot_time, read_environ=pid not in excluded)
            if entry is not None:
                entries[pid] = entry
        return cls(entries, excluded)

    def holds(self, ref: ProcessRef | None) -> bool:
        """Whether the process C{ref} names is in the table (alive, same start)."""
        entry = self.entries.get(ref.pid) if ref is not None else None
        return (entry is not None
                and abs(entry.create_time - ref.create_time) <= CREATE_TIME_TOLERANCE)

    def members(self, ref: ProcessRef | None, job_id: str) -> list[int]:
        """
        The pids of the job: the root C{ref} (if alive), all its
        descendants, and every process marked with C{job_id} with its
        descendants; never the caller or its ancestors.  The root comes
        first, then parents before their children; unrelated subtrees by
        start time.
        """
        starts = list(self.marked.get(job_id, ()))
        root_pid = ref.pid if self.holds(ref) else None
        if root_pid is not None:
            starts.append(root_pid)

        # Everything reachable from the starting points through parent links.
        members: set[int] = set()
        todo = starts
        while todo:
            pid = todo.pop()
            if pid in members:
                continue
            members.add(pid)
            todo.extend(self.children.get(pid, ()))

        def start_time(pid: int) -> float:
            return self.entries[pid].create_time

        # Order: subtrees whose top has no parent among the members, the
        # root's first, then by start time; each walked parents before children.
        tops = sorted((pid for pid in members if self.entries[pid].ppid not in members),
                      key=lambda pid: (pid != root_pid, start_time(pid), pid))
        ordered: list[int] = []
        queue = list(tops)
        seen: set[int] = set()
        while queue:
            pid = queue.pop(0)
            if pid in seen:
                continue
            seen.add(pid)
            if pid not in self.excluded:
                ordered.append(pid)
            kids = sorted((c for c in self.children.get(pid, ()) if c in members),
                          key=lambda c: (start_time(c), c))
            queue.extend(kids)
        return ordered

    def processes(self, pids: Iterable[int]) -> list[psutil.Process]:
        """
        psutil handles on C{pids}, each checked to be the very process the
        scan saw (same start time), so a pid recycled since is never used.
        """
        procs = []
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                if abs(proc.create_time() - self.entries[pid].create_time) > CREATE_TIME_TOLERANCE:
                    continue
            except _GONE:
                continue
            procs.append(proc)
        return procs

    def usage(self, pids: Iterable[int]) -> Usage:
        """
        What L{usage} says of the processes C{pids}, read now as psutil's
        cpu_times() and memory_info() read them (/proc/<pid>/stat and
        statm; the rss in stat is the kernel's cheaper approximation); a
        process gone since the scan, or whose pid was reused, is left out.
        """
        boot_time = psutil.boot_time()
        ticks = rss = count = 0
        for pid in pids:
            statm = _read(f"/proc/{pid}/statm")
            stat = _read(f"/proc/{pid}/stat")  # after statm: the same process read both
            if not statm or not stat:
                continue
            fields = _stat_fields(stat)
            try:
                if abs(_create_time(fields, boot_time)
                       - self.entries[pid].create_time) > CREATE_TIME_TOLERANCE:
                    continue
                ticks += _cpu_ticks(fields)
                rss += int(statm.split()[1])
            except (IndexError, ValueError):
                continue
            count += 1
        return Usage(cpu_seconds=ticks / _CLOCK_TICKS, rss_bytes=rss * _PAGE_SIZE,
                     processes=count)

def _uids(uids: Uids) -> frozenset[int]:
    return frozenset({os.getuid()}) if uids is None else frozenset(uids) | {os.getuid()}


def job_processes(ref: ProcessRef | None, job_id: str, uids: Uids = None) -> list[psutil.Process]:
    """
    Every live process of the job: the root C{ref} (if alive), all its
    descendants, and every process of the current user (or of C{uids}, the
    accounts engines run as) marked with C{KREE_JOB_ID=job_id} with its
    descendants.  The root comes first, then parents before their children;
    unrelated subtrees by start time.
    """
    table = ProcessTable.scan(uids)
    return table.processes(table.members(ref, job_id))


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


def _root(ref: ProcessRef | None) -> psutil.Process | None:
    """The live (not zombie) process C{ref} names, or None."""
    if ref is None:
        return None
    try:
        proc = psutil.Process(ref.pid)
    except _GONE:
        return None
    if not _same_create_time(proc, ref) or _status(proc) is None:
        return None
    return proc


def pause(ref: ProcessRef | None, job_id: str, uids: Uids = None) -> int:
    """
    SIGSTOP every process of the job.  The root (the engine) is stopped
    first, before any scan, so that it stops at once and forks no more;
    then the job is scanned and every process found that is not stopped is
    stopped.  A process may fork between a scan and the signal, so the scan
    is repeated (at most PAUSE_ROUNDS times) until it finds no process that
    is not stopped.  Returns how many distinct processes were sent SIGSTOP.
    """
    stopped: set[tuple[int, float]] = set()
    root = _root(ref)
    if root is not None and _status(root) not in _STOPPED:
        stopped.update(_key(p) for p in _signal([root], signal.SIGSTOP))
    for _ in range(PAUSE_ROUNDS):
        running = [p for p in job_processes(ref, job_id, uids) if _status(p) not in (None, *_STOPPED)]
        if not running:
            break
        reached = _signal(running, signal.SIGSTOP)
        stopped.update(_key(p) for p in reached)
        _wait_stopped(reached, _PAUSE_SETTLE)
    return len(stopped)


def resume(ref: ProcessRef | None, job_id: str, uids: Uids = None) -> int:
    """SIGCONT every process of the job, children first; returns how many."""
    return len(_signal(reversed(job_processes(ref, job_id, uids)), signal.SIGCONT))


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


def kill(ref: ProcessRef | None, job_id: str, *, timeout: float = 5.0,
         uids: Uids = None) -> int:
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
        procs = job_processes(ref, job_id, uids)
        if not procs:
            break
        _signal(procs, signal.SIGSTOP)
        killed.update(_key(p) for p in _signal(procs, signal.SIGKILL))
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL)
    return len(killed)


def all_stopped(ref: ProcessRef | None, job_id: str, uids: Uids = None) -> bool:
    """
    Whether every process of the job is stopped (or in a tracing stop).
    True when the job has no process left.
    """
    for proc in job_processes(ref, job_id, uids):
        status = _status(proc)
        if status is not None and status not in _STOPPED:
            return False
    return True


def usage(ref: ProcessRef | None, job_id: str, uids: Uids = None) -> Usage:
    """
    CPU seconds (user + system, plus the children_user/children_system of
    each process so that children it has waited for count) and resident
    memory summed over the job's live processes.
    """
    table = ProcessTable.scan(uids)
    return table.usage(table.members(ref, job_id))


def usage_many(jobs: dict[str, ProcessRef | None], uids: Uids = None) -> dict[str, Usage]:
    """L{usage} of every job in C{jobs} (job id -> its root), all from one scan."""
    table = ProcessTable.scan(uids)
    return {job_id: table.usage(table.members(ref, job_id)) for job_id, ref in jobs.items()}
