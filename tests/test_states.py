"""
Every cell of the state machine, legal and illegal.

The expected table is written out here on its own (not derived from
kree.states), so a change to the machine's table that does not match
DESIGN.md section 2 fails these tests.
"""

import pytest

from kree.errors import InvalidTransition
from kree.states import Action, JobState, allowed_actions, check_deletable, next_state

S = JobState
A = Action

# DESIGN.md section 2, plus the documented system rule that a queued job can
# fail (staging inputs fails).
EXPECTED = {
    S.NEW: {A.QUEUE: S.QUEUED, A.STOP: S.ABORTED, A.KILL: S.ABORTED},
    S.QUEUED: {
        A.DISPATCH: S.RUNNING,
        A.PAUSE: S.PAUSED,
        A.STOP: S.ABORTED,
        A.KILL: S.ABORTED,
        A.FAIL: S.FAILED,
    },
    S.RUNNING: {
        A.ASK_INPUT: S.WAITING,
        A.PAUSE: S.PAUSED,
        A.STOP: S.ABORTED,
        A.KILL: S.ABORTED,
        A.FINISH: S.FINISHED,
        A.FAIL: S.FAILED,
    },
    S.WAITING: {
        A.ANSWER: S.RUNNING,
        A.PAUSE: S.PAUSED,
        A.STOP: S.ABORTED,
        A.KILL: S.ABORTED,
        A.FAIL: S.FAILED,
    },
    S.FINISHED: {},
    S.FAILED: {},
    S.ABORTED: {},
}

# For a PAUSED job: what each action does, given the state it was paused from.
# (target state, the state it would then resume into)
EXPECTED_PAUSED = {
    S.QUEUED: {
        A.RESUME: (S.QUEUED, None),
        A.STOP: (S.ABORTED, None),
        A.KILL: (S.ABORTED, None),
        A.FAIL: (S.FAILED, None),
    },
    S.RUNNING: {
        A.RESUME: (S.RUNNING, None),
        A.STOP: (S.ABORTED, None),
        A.KILL: (S.ABORTED, None),
        # The engine raced the pause: it asked for input, finished or failed.
        A.ASK_INPUT: (S.PAUSED, S.WAITING),
        A.FINISH: (S.FINISHED, None),
        A.FAIL: (S.FAILED, None),
    },
    S.WAITING: {
        A.RESUME: (S.WAITING, None),
        A.STOP: (S.ABORTED, None),
        A.KILL: (S.ABORTED, None),
        A.FAIL: (S.FAILED, None),
    },
}

NOT_PAUSED = [s for s in JobState if s is not S.PAUSED]


def test_expected_table_covers_every_state():
    assert set(EXPECTED) | {S.PAUSED} == set(JobState)


@pytest.mark.parametrize("state", NOT_PAUSED)
@pytest.mark.parametrize("action", list(Action))
def test_every_cell(state, action):
    target = EXPECTED[state].get(action)
    if target is None:
        with pytest.raises(InvalidTransition) as info:
            next_state(state, action)
        error = info.value
        assert error.status == 409
        assert error.details["state"] == state.value
        assert error.details["action"] == action.value
        assert state.value in error.message and action.value in error.message
        assert set(error.details["allowed"]) == {a.value for a in EXPECTED[state]}
    else:
        step = next_state(state, action)
        assert (step.old, step.new) == (state, target)
        assert step.paused_from == (state if target is S.PAUSED else None)


@pytest.mark.parametrize("paused_from", [S.QUEUED, S.RUNNING, S.WAITING])
@pytest.mark.parametrize("action", list(Action))
def test_every_paused_cell(paused_from, action):
    expected = EXPECTED_PAUSED[paused_from].get(action)
    if expected is None:
        with pytest.raises(InvalidTransition):
            next_state(S.PAUSED, action, paused_from)
        return
    target, resumes_to = expected
    step = next_state(S.PAUSED, action, paused_from)
    assert step.new == target
    assert step.paused_from == resumes_to


@pytest.mark.parametrize("state", [S.QUEUED, S.RUNNING, S.WAITING])
def test_pause_then_resume_returns_to_the_paused_state(state):
    paused = next_state(state, A.PAUSE)
    assert paused.new is S.PAUSED and paused.paused_from is state
    resumed = next_state(paused.new, A.RESUME, paused.paused_from)
    assert resumed.new is state
    assert resumed.paused_from is None


def test_pausing_twice_is_refused():
    with pytest.raises(InvalidTransition, match="cannot pause a job in state PAUSED"):
        next_state(S.PAUSED, A.PAUSE, S.RUNNING)


def test_engine_asking_for_input_while_paused_resumes_into_waiting():
    paused = next_state(S.RUNNING, A.PAUSE)
    asked = next_state(paused.new, A.ASK_INPUT, paused.paused_from)
    assert asked.new is S.PAUSED and asked.paused_from is S.WAITING
    resumed = next_state(asked.new, A.RESUME, asked.paused_from)
    assert resumed.new is S.WAITING


@pytest.mark.parametrize("bad", [None, S.PAUSED, S.NEW, S.FINISHED])
def test_paused_without_a_valid_origin_can_only_be_stopped(bad):
    with pytest.raises(InvalidTransition):
        next_state(S.PAUSED, A.RESUME, bad)
    assert next_state(S.PAUSED, A.STOP, bad).new is S.ABORTED
    assert set(allowed_actions(S.PAUSED, bad)) == {A.STOP, A.KILL}


def test_terminal_states():
    assert {s for s in JobState if s.terminal} == {S.FINISHED, S.FAILED, S.ABORTED}
    for state in (S.FINISHED, S.FAILED, S.ABORTED):
        assert allowed_actions(state) == []
        with pytest.raises(InvalidTransition, match="no action allowed"):
            next_state(state, A.STOP)


def test_strings_are_accepted():
    assert next_state("NEW", "queue").new is S.QUEUED
    with pytest.raises(ValueError):
        next_state("NEW", "explode")


@pytest.mark.parametrize("state", list(JobState))
def test_only_new_and_ended_jobs_may_be_deleted(state):
    if state is JobState.NEW or state.terminal:
        check_deletable(state)
    else:
        with pytest.raises(InvalidTransition, match=f"in state {state}: stop or kill it first"):
            check_deletable(state)
