"""
The admin socket: how kree-admin acts on the running daemon.

A UNIX domain socket, <state-dir>/admin.sock, mode 0600, so only the
daemon's user can connect; the peer's uid is checked again on every
connection (SO_PEERCRED).  The protocol is JSON lines: a request
{"command": NAME, "args": {...}} gets zero or more {"progress": {...}} lines
and then one {"ok": true, "result": ...} or {"ok": false, "error": {"code",
"message"}}.  Commands:

  ping                          the daemon answers
  status                        version, uptime, jobs by state, queue, engines, subscriptions
  jobs.pause|resume|stop|kill   {"id": JOB}: a state action, as an admin (audited)
  jobs.purge                    {"older_than_seconds": N, "states": [...]}: delete ended jobs
                                 and their directories, reporting progress

Commands that only read or change the database work without the daemon
(kree-admin uses the store directly for those).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from kree import __version__
from kree.errors import KreeError
from kree.frontends import FrontendService
from kree.jobs import JobService
from kree.states import Action, JobState
from kree.sandbox import Sandbox
from kree.store import Store

MAX_REQUEST_BYTES = 65536
ACTIONS = {"jobs.pause": Action.PAUSE, "jobs.resume": Action.RESUME,
           "jobs.stop": Action.STOP, "jobs.kill": Action.KILL}
TERMINAL = [s.value for s in JobState if s.terminal]


class AdminError(KreeError):
    status = 400
    code = "bad_request"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def peer_uid(transport) -> int | None:
    """The connected peer's uid (SO_PEERCRED), or None if it cannot be read."""
    try:
        sock = transport.getHandle()
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[1]
    except (OSError, AttributeError):
        return None


class AdminProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST_BYTES
    log = Logger()

    refused = False

    def connectionMade(self) -> None:
        uid = peer_uid(self.transport)
        if uid != os.geteuid():
            # A peer whose uid cannot be read is refused too: no credentials,
            # no console.
            self.refused = True
            self.log.warn("admin socket: refused a connection from uid {uid}",
                          uid="unknown" if uid is None else uid)
            self._send({"ok": False, "error": {"code": "forbidden",
                                               "message": "only the daemon's user may use the admin socket"}})
            self.transport.loseConnection()

    def lineLengthExceeded(self, line) -> None:
        self._send({"ok": False, "error": {"code": "too_large",
                                           "message": f"requests are at most {MAX_REQUEST_BYTES} bytes"}})
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        if self.refused:
            return
        Deferred.fromCoroutine(self._answer(line))

    async def _answer(self, line: bytes) -> None:
        try:
            try:
                request = json.loads(line)
            except ValueError as e:
                raise AdminError("malformed", f"the request is not JSON: {e}") from None
            if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                raise AdminError("malformed", 'a request is {"command": NAME, "args": {...}}')
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise AdminError("malformed", "args must be an object")
            result = await self.factory.commands.run(request["command"], args, self._progress)
            self._send({"ok": True, "result": result})
        except KreeError as e:
            self._send({"ok": False, "error": {"code": e.code, "message": e.message}})
        except Exception as e:
            self.log.failure("admin command failed")
            self._send({"ok": False, "error": {"code": "internal_error",
                                               "message": f"{type(e).__name__}: {e}"}})

    def _progress(self, **fields) -> None:
        self._send({"progress": fields})

    def _send(self, message: dict) -> None:
        if self.transport is not None and self.transport.connected:
            self.sendLine(json.dumps(message, default=str).encode())


class EngineStatus(Protocol):
    """What runs engines (the supervisor), as kree-admin status shows it."""

    running_count: int
    max_running: int

    async def backend_status(self) -> dict[str, Any]: ...


class AdminCommands:
    """
    The commands, over the daemon's parts: job actions and purges through
    the job service (as every dialect), status from the store and the
    supervisor, every change audited.
    """

    def __init__(self, *, store: Store, jobs: JobService, frontends: FrontendService,
                 engines: EngineStatus, state_dir: Path, sandbox: Sandbox | None = None) -> None:
        self._store = store
        self._jobs = jobs
        self._frontends = frontends
        self._engines = engines
        self._state_dir = state_dir
        self._sandbox = sandbox
        self.started = time.time()

    async def run(self, command: str, args: dict[str, Any], progress) -> Any:
        if command == "ping":
            return {"pong": True}
        if command == "status":
            return await self.status()
        if command in ACTIONS:
            return await self.act(ACTIONS[command], args)
        if command == "jobs.purge":
            return await self.purge(args, progress)
        raise AdminError("unknown_command", f"unknown admin command {command!r}")

    async def status(self) -> dict[str, Any]:
        store = self._store
        counts = await store.jobs.count_by_state()
        subs = await store.subscriptions.list()
        schema = await store.schema_status()
        return {
            "daemon": "up",
            "version": __version__,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started, 1),
            "state_dir": str(self._state_dir),
            "store": store.url,
            "schema": schema.describe(),
            "jobs": counts,
            "queue_length": counts.get("QUEUED", 0),
            "running_engines": self._engines.running_count,
            "max_running": self._engines.max_running,
            "backends": await self._engines.backend_status(),
            "sandbox": self._sandbox.describe() if self._sandbox else {"mode": "none"},
            "subscriptions": {
                "active": sum(s.status == "active" for s in subs),
                "failing": [{"id": s.id, "url": s.url, "last_error": s.last_error}
                            for s in subs if s.status == "failing"],
            },
        }

    async def act(self, action: Action, args: dict[str, Any]) -> dict[str, Any]:
        job_id = args.get("id")
        if not isinstance(job_id, str):
            raise AdminError("malformed", "args.id (the job id) is required")
        job = await self._jobs.apply(job_id, action, reason=f"{action.value} by admin")
        await self._frontends.audit(actor="admin", action=f"job.{action.value}",
                                    job_id=job_id, outcome="ok")
        return {"id": job.id, "state": job.state.value,
                "paused_from": job.paused_from.value if job.paused_from else None}

    async def purge(self, args: dict[str, Any], progress) -> dict[str, Any]:
        older = args.get("older_than_seconds")
        if not isinstance(older, (int, float)) or isinstance(older, bool) or older < 0:
            raise AdminError("malformed", "args.older_than_seconds must be a number >= 0")
        names = args.get("states") or TERMINAL
        if not isinstance(names, list) or not all(n in JobState.__members__ for n in names):
            raise AdminError("malformed", "args.states must be a list of job states")
        purged = await self._jobs.purge(
            older, [JobState(name) for name in names],
            lambda done, total: progress(done=done, total=total))
        await self._frontends.audit(actor="admin", action="jobs.purge", outcome="ok",
                                    details={"purged": purged, "older_than_seconds": older})
        return {"purged": purged}


class AdminSocketService(Service):
    log = Logger()

    def __init__(self, commands: AdminCommands, path: Path, reactor) -> None:
        self._commands = commands
        self._path = Path(path)
        self._reactor = reactor
        self._port = None

    def startService(self) -> Deferred:
        Service.startService(self)
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        # A socket file left by a kreed that died: nobody listens on it (the
        # pid file already told us no other kreed runs here).
        if self._path.exists():
            self._path.unlink()
        factory = Factory.forProtocol(AdminProtocol)
        factory.commands = self._commands
        endpoint = UNIXServerEndpoint(self._reactor, str(self._path), mode=0o600)
        self._port = await endpoint.listen(factory)
        os.chmod(self._path, 0o600)
        self.log.info("admin socket at {path}", path=str(self._path))

    def stopService(self):
        Service.stopService(self)
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening()
        return None
