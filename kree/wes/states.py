"""
KREE job states as WES states (the State enum of WES 1.1).

A FAILED job is EXECUTOR_ERROR when the workflow failed and SYSTEM_ERROR
when KREE or its backend did.  The job record keeps only the error text, so
the kind is read from it: the texts below are the ones the supervisor and
the job service write for failures that are not the workflow's (kree.wes
may not import the supervisor, so they are repeated here; a test keeps the
two in step).
"""

from __future__ import annotations

from kree.records import Job
from kree.states import JobState

STATES = ("UNKNOWN", "QUEUED", "INITIALIZING", "RUNNING", "PAUSED", "COMPLETE",
          "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "CANCELING", "PREEMPTED")

_DIRECT = {
    JobState.NEW: "QUEUED",
    JobState.QUEUED: "QUEUED",
    JobState.RUNNING: "RUNNING",
    JobState.WAITING: "RUNNING",
    JobState.PAUSED: "PAUSED",
    JobState.FINISHED: "COMPLETE",
    JobState.ABORTED: "CANCELED",
}

#: How the errors of failures that are KREE's, not the workflow's, begin.
SYSTEM_ERROR_STARTS = (
    "quarantined:",                                      # a record recovery could not read
    "lost during daemon restart",                        # engine gone across a restart
    "the engine exited without reporting its end",       # killed from outside
    "no space left on the file system",                  # the job directory's disk
    "the engine could not start",                        # the backend failed to start it
    "the engine could not enter its sandbox",            # the kernel refused the sandbox
)
#: Words in an error that say the sandbox refused the job (an actor's access denied).
SYSTEM_ERROR_WORDS = ("sandbox",)


def is_system_error(error: str | None) -> bool:
    text = (error or "").strip().lower()
    return text.startswith(SYSTEM_ERROR_STARTS) or any(w in text for w in SYSTEM_ERROR_WORDS)


def wes_state(job: Job) -> str:
    return wes_state_of(job.state, job.error)


def wes_state_of(state: JobState, error: str | None = None) -> str:
    """As L{wes_state}, from a state (and, if FAILED, the error)."""
    if state is JobState.FAILED:
        return "SYSTEM_ERROR" if is_system_error(error) else "EXECUTOR_ERROR"
    return _DIRECT[state]
