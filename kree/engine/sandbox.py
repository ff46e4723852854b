"""
The sandbox an engine puts itself in before it runs any workflow code.

kreed hands the engine a L{SandboxSpec} (JSON in C{KREE_SANDBOX}); the
engine applies it first thing, and everything it starts inherits it:

  1. resource limits (setrlimit): CPU seconds, data memory, processes,
     file size, no core files;
  2. identity: when the engine starts as root, it becomes the unprivileged
     account of the spec (supplementary groups dropped, then gid, then uid);
     where that account may not pass a directory above the job directory,
     it gets a mount namespace of its own in which that directory is an
     empty tmpfs holding only the path to the job directory, bound there;
  3. C{no_new_privs}, so nothing it executes gains privileges (setuid
     binaries included);
  4. Landlock (the kernel's unprivileged access control, inherited by
     children and never lifted): read-only access to the paths of the spec
     (system directories, Python, the engine itself), read-write access to
     the job directory alone, a few devices; without network, no TCP bind or
     connect; and, where the kernel scopes them (ABI 6), no signals to and no
     abstract UNIX sockets of processes outside the sandbox;
  5. without network, a seccomp filter that refuses every socket but a UNIX
     one (UDP, raw and netlink sockets too, which Landlock does not cover)
     and io_uring (which could open sockets around it), with EACCES.

Everything here is plain system calls through ctypes (Linux, x86-64 and
arm64); L{landlock_abi} says what the kernel offers, so kreed can refuse to
start in a mode the kernel cannot give.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import resource
import stat
from typing import Any

import attrs

ENV = "KREE_SANDBOX"

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
_LANDLOCK_RULE_PATH_BENEATH = 1
_LANDLOCK_RULE_NET_PORT = 2

# File-system access rights, by the ABI that brought them.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
# Rights that apply to a file (not a directory): a rule on a file may hold only these.
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

# Devices every program expects to open read-write.
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")


class SandboxUnavailable(Exception):
    """The kernel cannot give what the sandbox needs."""


@attrs.frozen
class SandboxSpec:
    """What an engine may touch; written by kreed (kree.sandbox), applied here."""

    #: "landlock", or "none" (nothing applied: the admin said so).
    mode: str = "none"
    #: The account to become when started as root (None: stay who it is).
    uid: int | None = None
    gid: int | None = None
    #: The directory to work in (the job directory), entered before the
    #: account changes: that account may not pass the directories above it.
    workdir: str | None = None
    #: Read-only: files and directory trees.
    read: tuple[str, ...] = ()
    #: Read-write: the job directory.
    write: tuple[str, ...] = ()
    network: bool = False
    cpu_seconds: int | None = None
    memory_bytes: int | None = None
    processes: int | None = None
    file_bytes: int | None = None

    def to_env(self) -> str:
        return json.dumps(attrs.asdict(self), separators=(",", ":"))

    @classmethod
    def from_env(cls, text: str) -> "SandboxSpec":
        data = json.loads(text)
        data["read"] = tuple(data.get("read", ()))
        data["write"] = tuple(data.get("write", ()))
        return cls(**data)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int


def _syscall(number: int, *args) -> int:
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def landlock_abi() -> int:
    """The Landlock ABI version the kernel offers; 0 when it offers none."""
    try:
        return _syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    except OSError:
        return 0


def _fs_rights(abi: int) -> int:
    return _FS_BY_ABI[max(v for v in _FS_BY_ABI if v <= abi)]


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64),
                ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _ruleset_size(abi: int) -> int:
    # Older kernels know a shorter struct and refuse a longer one with E2BIG.
    return 8 if abi < 4 else (16 if abi < 6 else 24)


def _add_path(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # what does not exist cannot be reached either
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS
        rule = _PathBeneathAttr(rights, fd)
        _syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset),
                 ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0))
    finally:
        os.close(fd)


def _landlock(spec: SandboxSpec) -> int:
    """Build the Landlock ruleset (before dropping privileges, so every path opens)."""
    abi = landlock_abi()
    if abi < 1:
        raise SandboxUnavailable("the kernel offers no Landlock")
    everything = _fs_rights(abi)
    net = (NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 and not spec.network else 0
    scoped = (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0
    attr = _RulesetAttr(everything, net, scoped)
    ruleset = _syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr),
                       ctypes.c_size_t(_ruleset_size(abi)), ctypes.c_uint32(0))
    read = EXECUTE | READ_FILE | READ_DIR
    for path in spec.read:
        _add_path(ruleset, path, read)
    for path in DEVICES:
        _add_path(ruleset, path, READ_FILE | WRITE_FILE | (IOCTL_DEV if abi >= 5 else 0))
    for path in spec.write:
        _add_path(ruleset, path, everything & ~(MAKE_CHAR | MAKE_BLOCK))
    return ruleset


def _limits(spec: SandboxSpec) -> None:
    def cap(which: int, value: int | None, hard_extra: int = 0) -> None:
        if value is None:
            return
        _, hard = resource.getrlimit(which)
        soft = value if hard == resource.RLIM_INFINITY else min(value, hard)
        top = soft + hard_extra
        resource.setrlimit(which, (soft, top if hard == resource.RLIM_INFINITY
                                   else min(top, hard)))

    # SIGXCPU at the soft limit (the engine says why), SIGKILL a little later.
    cap(resource.RLIMIT_CPU, spec.cpu_seconds, hard_extra=5)
    # RLIMIT_DATA, not RLIMIT_AS: what a process writes (heap, anonymous
    # mappings, thread stacks), not the address space it merely reserves
    # (malloc arenas, mapped libraries), so a job's memory means memory.
    cap(resource.RLIMIT_DATA, spec.memory_bytes)
    cap(resource.RLIMIT_NPROC, spec.processes)
    cap(resource.RLIMIT_FSIZE, spec.file_bytes)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


# seccomp: a classic BPF program over struct seccomp_data {nr, arch, ip, args[6]}.
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_NR_SOCKET = {"x86_64": 41, "aarch64": 198}
_NR_IO_URING_SETUP = 425  # the same on both
_AF_UNIX = 1
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_RET_K = 0x06


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _no_sockets() -> None:
    """Refuse socket() but for AF_UNIX, and io_uring, with EACCES; other arches: refused."""
    machine = platform.machine()
    if machine not in _AUDIT_ARCH:
        raise SandboxUnavailable(f"no seccomp filter for {machine}")
    refuse = _SECCOMP_RET_ERRNO | errno.EACCES
    program = [
        (_BPF_LD_W_ABS, 0, 0, 4),                                  # arch
        (_BPF_JEQ_K, 1, 0, _AUDIT_ARCH[machine]),
        (_BPF_RET_K, 0, 0, refuse),                                # a foreign ABI: nothing
        (_BPF_LD_W_ABS, 0, 0, 0),                                  # nr
        (_BPF_JEQ_K, 0, 1, _NR_IO_URING_SETUP),
        (_BPF_RET_K, 0, 0, refuse),
        (_BPF_JEQ_K, 0, 3, _NR_SOCKET[machine]),
        (_BPF_LD_W_ABS, 0, 0, 16),                                 # args[0], low half: domain
        (_BPF_JEQ_K, 1, 0, _AF_UNIX),
        (_BPF_RET_K, 0, 0, refuse),
        (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
    ]
    filters = (_SockFilter * len(program))(*[_SockFilter(*row) for row in program])
    fprog = _SockFprog(len(program), filters)
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        code = ctypes.get_errno()
        raise SandboxUnavailable(f"seccomp: {os.strerror(code)}")


def _gid(spec: SandboxSpec) -> int:
    return spec.gid if spec.gid is not None else spec.uid


def _changes_account(spec: SandboxSpec) -> bool:
    return spec.uid is not None and os.geteuid() == 0 and spec.uid != 0


def _searchable(path: str, uid: int, gid: int) -> bool:
    """Whether C{uid} (with only C{gid}) may pass through the directory C{path}."""
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _closed_ancestor(job_dir: str, uid: int, gid: int) -> str | None:
    """The topmost directory above C{job_dir} that the account may not pass, if any."""
    parts = os.path.realpath(job_dir).split("/")[1:-1]
    path = "/"
    if not _searchable(path, uid, gid):
        return path
    for part in parts:
        path = os.path.join(path, part)
        if not _searchable(path, uid, gid):
            return path
    return None


def _mount(source, target, fstype, flags: int, data, what: str) -> None:
    if _libc.mount(source, target, fstype, flags, data) != 0:
        raise SandboxUnavailable(f"{what}: {os.strerror(ctypes.get_errno())}")


def _make_job_reachable(job_dir: str, uid: int, gid: int) -> None:
    """
    Where the account may not pass a directory above the job directory: a
    mount namespace of our own, an empty tmpfs on that directory holding only
    the path down to the job directory, and the job directory bound there,
    at the same path.  What else was under that directory is not there.
    """
    closed = _closed_ancestor(job_dir, uid, gid)
    if closed is None:
        return
    job_dir = os.path.realpath(job_dir)
    _libc.unshare.restype = ctypes.c_int
    _libc.mount.restype = ctypes.c_int
    if _libc.unshare(_CLONE_NEWNS) != 0:
        raise SandboxUnavailable(f"unshare: {os.strerror(ctypes.get_errno())}")
    _mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None, "private mounts")
    # Opened in the new namespace: a bind must come from one of its mounts.
    fd = os.open(job_dir, os.O_PATH | os.O_CLOEXEC)
    try:
        _mount(b"tmpfs", os.fsencode(closed), b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
               b"mode=0755,size=1m", f"a tmpfs on {closed}")
        old_umask = os.umask(0o022)  # kreed's 077 would close the path again
        try:
            os.makedirs(job_dir, mode=0o755, exist_ok=True)
        finally:
            os.umask(old_umask)
        _mount(os.fsencode(f"/proc/self/fd/{fd}"), os.fsencode(job_dir), None,
               _MS_BIND | _MS_REC, None, "binding the job directory")
    finally:
        os.close(fd)
    os.chdir(job_dir)


def _become(spec: SandboxSpec) -> None:
    """Started as root: become the spec's account (groups, then gid, then uid)."""
    if _changes_account(spec):
        os.setgroups([])
        os.setgid(_gid(spec))
        os.setuid(spec.uid)
        if os.geteuid() == 0 or os.getuid() == 0:
            raise SandboxUnavailable("the engine is still root after changing account")


def apply(spec: SandboxSpec) -> None:
    """
    Put this process, and everything it will start, in the sandbox; for
    good; its working directory is then the spec's C{workdir}.  Raises
    L{SandboxUnavailable} (or OSError) if any step fails: the engine then
    runs nothing.
    """
    if spec.mode not in ("landlock", "none"):
        raise SandboxUnavailable(f"unknown sandbox mode {spec.mode!r}")
    if spec.workdir:
        os.chdir(spec.workdir)
    if spec.mode == "none":
        if spec.workdir and _changes_account(spec):
            _make_job_reachable(spec.workdir, spec.uid, _gid(spec))
        _become(spec)  # not contained, but never root
        return
    _limits(spec)
    ruleset = _landlock(spec)
    try:
        if spec.workdir and _changes_account(spec):
            _make_job_reachable(spec.workdir, spec.uid, _gid(spec))
        _become(spec)
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise SandboxUnavailable(f"no_new_privs: {os.strerror(ctypes.get_errno())}")
        _syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    if not spec.network:
        _no_sockets()


def spec_from_environment(environ: dict[str, str] | None = None) -> SandboxSpec | None:
    """The spec kreed put in C{KREE_SANDBOX}, if any, taken out of the environment."""
    environ = os.environ if environ is None else environ
    text = environ.pop(ENV, None)
    return SandboxSpec.from_env(text) if text else None


def describe(spec: SandboxSpec) -> dict[str, Any]:
    """What the engine reports of its sandbox (in its start event)."""
    return {"mode": spec.mode, "uid": os.getuid(), "network": spec.network,
            "limits": {k: getattr(spec, k) for k in
                       ("cpu_seconds", "memory_bytes", "processes", "file_bytes")}}
