"""
Contained jobs, the daemon's side ([sandbox]): what each engine may touch.

The engine contains itself (L{kree.engine.sandbox}) before it runs any
workflow code, from the L{SandboxSpec} kreed hands it in its environment;
this module decides that spec, once per job:

  - files: read-only the system (/usr, /etc, /opt ...), Python and KREE's
    installation and [sandbox] read_paths; read-write the job directory
    alone (its own temporary directory inside).  Nothing of the state
    directory (database, certificates and keys, cache, logs, other jobs),
    of other job roots or of the TLS files is granted, even where it lies
    under a granted directory: such a grant is split into its other entries;
  - identity: when kreed runs as root, engines run as [sandbox] user (never
    root), and the job directory is handed to that account;
  - network: none, unless the job asks (resources.network) and its frontend
    is one of [sandbox] network_frontends;
  - limits per process: CPU seconds, data memory, file size, and the
    engine account's processes, from the job's resources and [sandbox].

L{Sandbox.check} runs at daemon start: an engine of each kind under the
spec must be able to start and import what it needs (the CWL engine:
cwltool and node too), else kreed refuses to start and says why.  With C{mode = "none"} nothing is contained but the account.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.utils import getProcessOutputAndValue

import kree
from kree.engine.sandbox import ENV, SandboxSpec, landlock_abi
from kree.engines import ENGINE_KINDS
from kree.errors import ConfigError
from kree.jobspec import InvalidJobSpec

#: What every program reads of the system.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt",
                "/proc", "/sys")
#: The job's own temporary directory, inside the job directory.
TMP = "tmp"


def granted(paths: Iterable[str | Path], protected: Iterable[Path]) -> list[str]:
    """
    C{paths} as Landlock grants that reach none of C{protected}: a path that
    holds a protected one is replaced by its other entries (recursively),
    a symbolic link by where it leads, a protected path is left out.
    """
    shielded = [Path(os.path.realpath(p)) for p in protected]
    out: list[str] = []
    seen: set[Path] = set()

    def grant(path: Path) -> None:
        path = Path(os.path.realpath(path))
        if path in seen or not path.exists():
            return
        seen.add(path)
        inner = [p for p in shielded if p == path or path in p.parents]
        if not inner:
            out.append(str(path))
        elif path not in inner and path.is_dir():
            for child in sorted(path.iterdir()):
                grant(child)

    for path in paths:
        grant(Path(path))
    return out


@attrs.frozen
class Account:
    name: str
    uid: int
    gid: int


class Sandbox:
    """How this kreed contains its engines (one per daemon, shared by the backends)."""

    def __init__(self, config) -> None:
        """
        @param config: a L{kree.config.Config}.
        @raise ConfigError: kreed runs as root and [sandbox] user is no
            unprivileged account here.
        """
        self._settings = settings = config.sandbox
        self.mode = settings.mode
        self.account: Account | None = None
        #: Why engines cannot run here (raised by L{check} at daemon start).
        self.problem: ConfigError | None = None
        if os.geteuid() == 0:
            try:
                self.account = self._account(settings.user)
            except ConfigError as e:
                self.problem = e
        self._network_frontends = frozenset(settings.network_frontends)
        protected = [config.state_dir, *(config.job_root(b) for b in config.backends)]
        protected += [config.tls_path(name) for name in ("ca", "cert", "key", "crl")
                      if config.tls_path(name) is not None]
        protected += [Path(p) for p in (config.events.client_key, config.events.client_cert)
                      if p]
        if config.source is not None:
            protected.append(Path(config.source))
        self._protected = protected
        python = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  os.path.dirname(os.path.realpath(sys.executable))]
        code = [p for p in sys.path if p and os.path.exists(p)]
        code.append(str(Path(kree.__file__).resolve().parent))
        self._read = granted([*SYSTEM_PATHS, *python, *code, *settings.read_paths], protected)

    @staticmethod
    def _account(name: str) -> Account:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError([
                f"sandbox.user: there is no account {name!r}; engines never run as root. "
                f"Create one (useradd --system --no-create-home --shell /usr/sbin/nologin "
                f"{name}) or name another in [sandbox] user"]) from None
        if entry.pw_uid == 0:
            raise ConfigError([f"sandbox.user: {name!r} is root; engines never run as root"])
        return Account(name, entry.pw_uid, entry.pw_gid)

    # -- what a job may ask for -----------------------------------------------------

    def check_resources(self, resources: dict[str, Any], frontend: str) -> None:
        """
        @raise InvalidJobSpec: 422, naming the resource: network for a
            frontend that may not have it, or a limit over the server's.
        """
        settings = self._settings
        if resources.get("network") and frontend not in self._network_frontends:
            raise InvalidJobSpec(
                "network_not_allowed",
                f"network: jobs of frontend {frontend!r} may not have network on this server",
                field="network")
        for name, maximum in (("processes", settings.max_processes),
                              ("file_size", settings.max_file_bytes),
                              ("cpu_time", settings.cpu_seconds or None)):
            value = resources.get(name)
            if value is not None and maximum is not None and value > maximum:
                raise InvalidJobSpec("invalid_resources",
                                     f"{name}: at most {maximum} on this server, not {value}",
                                     field=name, maximum=maximum)

    # -- one engine -----------------------------------------------------------------

    def spec_for(self, job_dir: Path, resources: dict[str, Any]) -> SandboxSpec:
        settings = self._settings
        account = self.account
        memory = resources.get("memory") or settings.memory_bytes or None
        return SandboxSpec(
            mode=self.mode,
            uid=account.uid if account else None,
            gid=account.gid if account else None,
            workdir=str(job_dir),
            read=tuple(self._read),
            write=(str(job_dir),),
            network=bool(resources.get("network")),
            cpu_seconds=resources.get("cpu_time") or settings.cpu_seconds or None,
            memory_bytes=memory,
            processes=resources.get("processes") or settings.max_processes,
            file_bytes=resources.get("file_size") or settings.max_file_bytes,
        )

    def environment(self, job_dir: Path, resources: dict[str, Any]) -> dict[str, str]:
        """What an engine's environment gets: its spec and its own temporary directory."""
        tmp = str(Path(job_dir) / TMP)
        return {ENV: self.spec_for(job_dir, resources).to_env(), "TMPDIR": tmp, "HOME": tmp}

    def hand_over(self, job_dir: Path) -> None:
        """
        Make the prepared job directory the engine's: its temporary directory
        created and, when engines change account, everything in it owned by
        that account.  Blocking: run it in a thread.
        """
        job_dir = Path(job_dir)
        (job_dir / TMP).mkdir(mode=0o700, exist_ok=True)
        if self.account is None:
            return
        uid, gid = self.account.uid, self.account.gid
        os.chown(job_dir, uid, gid, follow_symlinks=False)
        for root, dirs, files in os.walk(job_dir):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)

    # -- the daemon ---------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What GET /v1/service-info and kree-admin status show."""
        return {"mode": self.mode,
                "user": self.account.name if self.account else None,
                "landlock_abi": landlock_abi() if self.mode == "landlock" else None}

    async def check(self, reactor, scratch: Path) -> None:
        """
        Start an engine under this sandbox (in C{scratch}, a directory of its
        own) and have it import and run what it needs.

        @raise ConfigError: the kernel cannot give the mode, or an engine
            cannot work inside it (why, and what to change).
        """
        if self.problem is not None:
            raise self.problem
        if self.mode == "landlock" and landlock_abi() < 1:
            raise ConfigError([
                "sandbox.mode: this kernel offers no Landlock (Linux 5.13 or newer, with "
                "Landlock enabled), so engines cannot be contained; set [sandbox] mode = "
                '"none" only if every workflow here is trusted'])
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(parents=True)
        self.hand_over(scratch)
        env = {**os.environ, **self.environment(scratch, {})}
        try:
            # Every engine kind, at once: each must work in the sandbox.
            answers = await gatherResults([
                Deferred.fromCoroutine(self._check_kind(kind, reactor, scratch, env))
                for kind in ENGINE_KINDS.values()], consumeErrors=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        problems = [problem for problem in answers if problem is not None]
        if problems:
            raise ConfigError(problems)

    async def _check_kind(self, kind, reactor, scratch: Path, env: dict[str, str]) -> str | None:
        """Why engines of C{kind} cannot work in the sandbox, or None."""
        executable, *args = kind.command("sandbox-check")
        out, err, code = await getProcessOutputAndValue(executable, args, env=env,
                                                        path=str(scratch), reactor=reactor)
        if code == 0:
            return None
        text = (err or out).decode(errors="replace").strip().splitlines()
        return (f"sandbox: the {kind.name} engine cannot work in the sandbox ({self.mode}, "
                f"account {self.account.name if self.account else 'kreed’s own'}): "
                + ("; ".join(text[-5:]) or f"exit code {code}")
                + ". The engine account must be able to read Python and KREE "
                "(for Python under /root: chmod o+x /root); or name more in "
                "[sandbox] read_paths")
