"""
The real single-node Slurm cluster for the Slurm backend's tests.

.ci/run starts it with etc/slurm-single-node.sh and sets
KREE_REQUIRE_SLURM=1, so that CI can never pass without running these
tests; elsewhere they are skipped, with the reason, when no cluster answers.
"""

from __future__ import annotations

import functools
import os
import subprocess

import pytest

SLURM_CONFIG = """
[supervisor]
stop_grace_seconds = 3
monitor_interval_seconds = 0.5
[backends.slurm]
enabled = true
poll_seconds = 0.5
events_poll_seconds = 0.2
"""


@functools.cache
def _slurm_problem() -> str | None:
    """Why no cluster answers, or None; asked once per test run (sinfo can take seconds)."""
    try:
        answer = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if answer.returncode == 0 and answer.stdout.strip():
        return None
    return answer.stderr.strip() or "sinfo shows no node"


def require_slurm() -> None:
    problem = _slurm_problem()
    if problem is None:
        return
    if os.environ.get("KREE_REQUIRE_SLURM") == "1":
        pytest.fail(f"Slurm is required here (KREE_REQUIRE_SLURM=1) but {problem}")
    pytest.skip(f"no Slurm cluster (etc/slurm-single-node.sh start): {problem}")


def slurm_jobs(kree_job_id: str) -> list[tuple[int, str, str]]:
    """(Slurm id, state, reason) of the Slurm jobs named for a KREE job."""
    out = subprocess.run(["squeue", "-h", "-t", "all", f"--name=kree-{kree_job_id}",
                          "-o", "%i|%T|%r"], capture_output=True, text=True, check=True,
                         timeout=10).stdout
    rows = []
    for line in out.splitlines():
        slurm_id, state, reason = line.split("|")
        rows.append((int(slurm_id), state, reason))
    return rows


def slurm_job(kree_job_id: str) -> tuple[int, str, str]:
    rows = slurm_jobs(kree_job_id)
    assert len(rows) == 1, rows
    return rows[0]


def show_job(slurm_id: int) -> dict[str, str]:
    """scontrol show job, as a dict of its KEY=VALUE fields."""
    out = subprocess.run(["scontrol", "show", "job", "-o", str(slurm_id)], capture_output=True,
                         text=True, check=True, timeout=10).stdout
    fields = {}
    for part in out.split():
        key, sep, value = part.partition("=")
        if sep:
            fields[key] = value
    return fields
