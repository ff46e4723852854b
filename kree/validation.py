"""
Checking a workflow before a job is created: the engine's `validate`, run as
a subprocess (the daemon never loads actor packages itself), with the admin's
actor policy.  The answer (valid or the engine's problems, and every settable
parameter with its default) is cached per document and policy, so only the
first job of a workflow version pays for the subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.threads import deferToThreadPool
from twisted.internet.utils import getProcessOutputAndValue

from kree.errors import KreeError

CACHE_SIZE = 256


class InvalidWorkflow(KreeError):
    status = 422
    code = "invalid_workflow"


@attrs.frozen
class Checked:
    valid: bool
    problems: list[str]
    messages: list[dict[str, Any]]
    parameters: dict[str, dict[str, Any]]  # full name -> {"default", "string"}


def _write_policy(policy: dict[str, str]) -> str:
    fd, path = tempfile.mkstemp(prefix="kree-policy-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(policy, f)
    return path


class WorkflowChecker:
    def __init__(self, reactor, *, python: str = sys.executable) -> None:
        self._reactor = reactor
        self._python = python
        self._cache: OrderedDict[tuple[str, str], Checked] = OrderedDict()

    async def check(self, path: Path, sha256: str, policy: dict[str, str]) -> Checked:
        policy_key = hashlib.sha256(json.dumps(policy, sort_keys=True).encode()).hexdigest()
        key = (sha256, policy_key)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        threads = self._reactor.getThreadPool()
        policy_file = await deferToThreadPool(self._reactor, threads, _write_policy, policy)
        try:
            out, err, code = await getProcessOutputAndValue(
                self._python, ["-m", "kree.engine", "validate", str(path), "--policy", policy_file],
                env=dict(os.environ), reactor=self._reactor)
        finally:
            await deferToThreadPool(self._reactor, threads, os.unlink, policy_file)
        try:
            report = json.loads(out)
        except ValueError:
            raise InvalidWorkflow(f"the engine could not check the workflow (exit {code}): "
                                  f"{err.decode(errors='replace')[-500:]}") from None
        checked = Checked(
            valid=bool(report.get("valid")),
            problems=list(report.get("problems", [])),
            messages=list(report.get("messages", [])),
            parameters={row["name"]: {"default": row["default"], "string": row["string"]}
                        for row in report.get("parameters", [])},
        )
        self._cache[key] = checked
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return checked
