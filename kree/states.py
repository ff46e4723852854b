"""
The job state machine, as data.

Pure: no Twisted, no SQL.  The job service (L{kree.jobs}) asks L{next_state}
inside the same database transaction that writes the result, so the check and
the write can never disagree.

The table follows DESIGN.md section 2::

    NEW      --queue-->     QUEUED   --dispatch-->  RUNNING  <--answer--  WAITING
                                                    RUNNING  --ask_input--> WAITING
    QUEUED, RUNNING, WAITING  --pause-->  PAUSED  --resume-->  (the state it was paused from)
    RUNNING  --finish-->  FINISHED          RUNNING, WAITING  --fail-->  FAILED
    any non-terminal state  --stop | kill-->  ABORTED
    FINISHED, FAILED, ABORTED: terminal (only delete)

Two rules go beyond the user-visible table, both for events that come from
the system rather than from a frontend:

 - C{fail} is also legal from QUEUED: staging inputs can fail before a job
   ever runs, and a queued job must not be stuck forever.
 - An engine's own events (C{ask_input}, C{finish}, C{fail}) can race a
   pause: the engine may write "waiting" or exit just before SIGSTOP reaches
   it.  On a PAUSED job such an action is judged against the state the job
   was paused from.  C{ask_input} keeps the job PAUSED but makes it resume
   into WAITING; C{finish} and C{fail} end it.  Nothing is lost either way.
"""

from __future__ import annotations

import enum

import attrs

from kree.errors import InvalidTransition


class JobState(enum.StrEnum):
    NEW = "NEW"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    PAUSED = "PAUSED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    ABORTED = "ABORTED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.FINISHED, JobState.FAILED, JobState.ABORTED})

#: States a job may be deleted (or purged) in: no engine runs for it.
DELETABLE_STATES = frozenset({JobState.NEW} | TERMINAL_STATES)

#: Where quarantine puts a job whose record cannot be understood, from any state.
QUARANTINE_STATE = JobState.FAILED


def check_deletable(state: JobState) -> None:
    """@raise InvalidTransition: a job in C{state} still has (or may get) an engine."""
    if state not in DELETABLE_STATES:
        raise InvalidTransition(state, "delete",
                                f"cannot delete a job in state {state}: stop or kill it first")


# States a job can be paused from, and so resumed into.
PAUSABLE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.WAITING})


class Action(enum.StrEnum):
    QUEUE = "queue"
    DISPATCH = "dispatch"
    ASK_INPUT = "ask_input"
    ANSWER = "answer"
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    KILL = "kill"
    FINISH = "finish"
    FAIL = "fail"


# Actions that the engine (not a person) causes; see the module docstring.
ENGINE_ACTIONS = frozenset({Action.ASK_INPUT, Action.FINISH, Action.FAIL})

_S = JobState
_A = Action

TRANSITIONS: dict[tuple[JobState, Action], JobState] = {
    (_S.NEW, _A.QUEUE): _S.QUEUED,
    (_S.NEW, _A.STOP): _S.ABORTED,
    (_S.NEW, _A.KILL): _S.ABORTED,
    (_S.QUEUED, _A.DISPATCH): _S.RUNNING,
    (_S.QUEUED, _A.PAUSE): _S.PAUSED,
    (_S.QUEUED, _A.STOP): _S.ABORTED,
    (_S.QUEUED, _A.KILL): _S.ABORTED,
    (_S.QUEUED, _A.FAIL): _S.FAILED,
    (_S.RUNNING, _A.ASK_INPUT): _S.WAITING,
    (_S.RUNNING, _A.PAUSE): _S.PAUSED,
    (_S.RUNNING, _A.STOP): _S.ABORTED,
    (_S.RUNNING, _A.KILL): _S.ABORTED,
    (_S.RUNNING, _A.FINISH): _S.FINISHED,
    (_S.RUNNING, _A.FAIL): _S.FAILED,
    (_S.WAITING, _A.ANSWER): _S.RUNNING,
    (_S.WAITING, _A.PAUSE): _S.PAUSED,
    (_S.WAITING, _A.STOP): _S.ABORTED,
    (_S.WAITING, _A.KILL): _S.ABORTED,
    (_S.WAITING, _A.FAIL): _S.FAILED,
    # RESUME from PAUSED is computed from paused_from, see next_state().
    (_S.PAUSED, _A.STOP): _S.ABORTED,
    (_S.PAUSED, _A.KILL): _S.ABORTED,
}


@attrs.frozen
class Transition:
    """The outcome of applying an action: where the job goes."""

    action: Action
    old: JobState
    new: JobState
    old_paused_from: JobState | None
    # The state a PAUSED job will resume into; None unless new is PAUSED.
    paused_from: JobState | None


def next_state(
    state: JobState, action: Action, paused_from: JobState | None = None
) -> Transition:
    """
    Apply C{action} to a job in C{state}.

    @param paused_from: for a PAUSED job, the state it was paused from.
    @raise InvalidTransition: the action is not legal in this state.
    """
    state = JobState(state)
    action = Action(action)
    paused_from = JobState(paused_from) if paused_from is not None else None
    found = _lookup(state, action, paused_from)
    if found is None:
        raise InvalidTransition(state, action, allowed=allowed_actions(state, paused_from))
    return found


def allowed_actions(state: JobState, paused_from: JobState | None = None) -> list[Action]:
    """The actions legal in C{state}, in L{Action} order (for error messages)."""
    return [a for a in Action if _lookup(JobState(state), a, paused_from) is not None]


def _lookup(
    state: JobState, action: Action, paused_from: JobState | None
) -> Transition | None:
    if state is JobState.PAUSED:
        if paused_from not in PAUSABLE_STATES:
            # A PAUSED record without a valid paused_from can only be stopped.
            paused_from = None
        if action is Action.RESUME:
            if paused_from is None:
                return None
            return Transition(action, state, paused_from, paused_from, None)
        if action in ENGINE_ACTIONS:
            target = TRANSITIONS.get((paused_from, action)) if paused_from else None
            if target is None:
                return None
            if target is JobState.WAITING:
                # Stay paused, but resume into WAITING.
                return Transition(action, state, JobState.PAUSED, paused_from, target)
            return Transition(action, state, target, paused_from, None)
    target = TRANSITIONS.get((state, action))
    if target is None:
        return None
    return Transition(
        action,
        state,
        target,
        paused_from,
        state if target is JobState.PAUSED else None,
    )
