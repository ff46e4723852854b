"""
kree-admin's side of the admin socket (see kree.admin.server).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Callable


class DaemonNotRunning(Exception):
    pass


class AdminCallFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def call(path: Path, command: str, args: dict[str, Any] | None = None, *,
         on_progress: Callable[[dict], None] | None = None, timeout: float = 600) -> Any:
    """One request to the running daemon; its result."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise DaemonNotRunning(
            f"daemon not running (no one listens on {path}): start it with `kreed`") from None
    except PermissionError:
        sock.close()
        raise AdminCallFailed("forbidden", f"{path}: permission denied; run kree-admin as "
                                           "the daemon's user") from None
    try:
        sock.sendall(json.dumps({"command": command, "args": args or {}}).encode() + b"\n")
        reader = sock.makefile("rb")
        for line in reader:
            message = json.loads(line)
            if "progress" in message:
                if on_progress is not None:
                    on_progress(message["progress"])
                continue
            if message.get("ok"):
                return message.get("result")
            error = message.get("error") or {}
            raise AdminCallFailed(error.get("code", "failed"), error.get("message", "failed"))
        raise AdminCallFailed("disconnected", "the daemon closed the connection without an answer")
    finally:
        sock.close()
