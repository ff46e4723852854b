"""
Carrying out on engines what frontends and admins applied: an observer of
the job service.  A pause, resume, stop or kill already committed is done to
the job's engine (SIGSTOP, SIGCONT, SIGTERM then SIGKILL after the grace
period, SIGKILL); a job that starts WAITING gets its input timer; a job that
becomes QUEUED wakes dispatch.
"""

from __future__ import annotations

from typing import Callable

from kree.records import Event
from kree.states import Action, JobState
from kree.supervisor.background import in_background
from kree.supervisor.monitoring import Monitor
from kree.supervisor.tracking import EngineTracker


class Actions:
    def __init__(self, engines: EngineTracker, monitor: Monitor, kick: Callable[[], None]) -> None:
        self._engines = engines
        self._monitor = monitor
        self._kick = kick

    def observe(self, event: Event) -> None:
        """An observer of the job service (L{kree.jobs.JobService.add_observer})."""
        if event.type != "job.state":
            return
        data = event.data
        action, new = data.get("action"), data.get("to")
        job_id = event.job_id
        if new == JobState.QUEUED.value:
            self._kick()
        if job_id not in self._engines:
            return
        act = self._engines.act
        if action == Action.PAUSE.value:
            self._monitor.cancel_input_timer(job_id)
            in_background(act(job_id, "pause"))
        elif action == Action.RESUME.value:
            in_background(act(job_id, "resume"))
            if new == JobState.WAITING.value:
                in_background(self._monitor.arm_input_timer(job_id))
        elif action == Action.ASK_INPUT.value and new == JobState.WAITING.value:
            in_background(self._monitor.arm_input_timer(job_id))
        elif action == Action.STOP.value:
            in_background(act(job_id, self._monitor.terminate_then_kill))
        elif action == Action.KILL.value:
            in_background(act(job_id, "kill"))
