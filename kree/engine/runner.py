"""
Running one job directory, and checking a workflow without running it.

A job directory holds C{workflow.xml}, C{parameters.json} (overrides by full
name), optionally C{policy.json} (actor class -> allow | replace:<Class> |
remove | reject) and C{inputs/}; the engine writes C{events.jsonl} and
C{products/}.  The last event is always C{end}, with the exit code, so a
daemon that re-adopts the engine learns how it ended without wait().
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from kree.engine import directors, sandbox, software
from kree.engine.model import Model, StopRequested, ValidationError, WorkflowError, build
from kree.engine.moml import MomlError, parse_moml
from kree.engine.protocol import (
    EXIT_FAILED,
    EXIT_FINISHED,
    EXIT_STOPPED,
    EngineContext,
    EventWriter,
)
from kree.engine.policy import valid_policy
from kree.engine.registry import Registry, effective_policy
from kree.engine.sandbox import SandboxSpec


@attrs.frozen
class Checked:
    model: Model | None
    problems: list[str]
    messages: list[tuple[str, str]]


def _needed_software(registry: Registry, data: bytes) -> list[str]:
    # Detecting software runs programs: only for what the document mentions.
    names = set()
    text = data.decode("utf-8", errors="replace")
    for entry in registry.describe():
        needs = entry["software"] + entry["software_any"]
        if needs and entry["class"] in text:
            names.update(needs)
    return sorted(names)


def check(data: bytes, *, overrides: dict[str, Any] | None = None,
          policy: dict[str, str] | None = None, registry: Registry | None = None,
          context: EngineContext | None = None) -> Checked:
    """Parse, build and schedule (SDF) without running; every problem found."""
    registry = registry or Registry.default()
    problems = list(registry.load_problems)
    policy = effective_policy(policy)
    bad = [f"policy for {cls}: {rule!r} is not allow, replace:<Class>, remove or reject"
           for cls, rule in policy.items() if not valid_policy(rule)]
    if bad:
        return Checked(None, problems + bad, [])
    if context is None:
        context = EngineContext(Path.cwd(), None,
                                software=software.detect(_needed_software(registry, data)))
    try:
        top = parse_moml(data)
        model = build(top, registry, policy=policy, overrides=overrides, context=context)
        if model.director.class_name == directors.SDF:
            directors.sdf_schedule(model.actors)
    except (MomlError, ValidationError) as e:
        return Checked(None, problems + e.problems, [])
    except WorkflowError as e:  # a parameter an actor reads while scheduling
        return Checked(None, problems + [str(e)], [])
    return Checked(model, problems, model.policy_messages)


def _read_json(path: Path, what: str) -> dict:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise ValidationError([f"{what} ({path.name}) cannot be read: {e}"]) from None
    if not isinstance(value, dict):
        raise ValidationError([f"{what} ({path.name}) must be a JSON object"])
    return value


def enter_sandbox(contained: SandboxSpec, events: EventWriter) -> bool:
    """
    Enter the sandbox (kree.engine.sandbox), for every engine kind; if it
    cannot be entered, say why in the events, end them and answer False:
    the engine then runs nothing.
    """
    try:
        sandbox.apply(contained)
    except (sandbox.SandboxUnavailable, OSError) as e:
        error = f"the engine could not enter its sandbox: {e}"
        events.write({"type": "error", "message": error})
        events.write({"type": "end", "exit_code": EXIT_FAILED, "state": "failed",
                      "error": error})
        events.close()
        return False
    return True


def run_job(job_dir: Path, *, stdin_fd: int | None = None, use_fd3: bool = True,
            install_signals: bool = True, echo=None,
            contained: SandboxSpec | None = None) -> int:
    """
    Run the job in C{job_dir}; the exit code (also in the final end event).

    @param contained: the sandbox to enter first (kree.engine.sandbox).
    """
    job_dir = Path(job_dir).resolve()
    events = EventWriter(job_dir, use_fd3=use_fd3, echo=echo)
    if contained is not None and not enter_sandbox(contained, events):
        return EXIT_FAILED
    context = EngineContext(job_dir, events, stdin_fd=stdin_fd)
    if install_signals:
        context.install_stop_handler()
    (job_dir / "products").mkdir(exist_ok=True)
    code, error = EXIT_FAILED, None
    try:
        data = (job_dir / "workflow.xml").read_bytes()
        overrides = _read_json(job_dir / "parameters.json", "the parameters")
        policy = _read_json(job_dir / "policy.json", "the actor policy")
        registry = Registry.default()
        context.software = software.detect(_needed_software(registry, data))
        checked = check(data, overrides=overrides, policy=policy, registry=registry,
                        context=context)
        if checked.problems:
            raise ValidationError(checked.problems)
        for actor, text in checked.messages:
            context.message(actor, text, level="warning")
        director = directors.DIRECTORS[checked.model.director.class_name](checked.model, context)
        director.run()
        context.progress(1.0)
        code = EXIT_FINISHED
    except StopRequested:
        code, error = EXIT_STOPPED, "stopped"
    except ValidationError as e:
        error = "invalid workflow: " + "; ".join(e.problems)
        context.emit({"type": "error", "message": error, "problems": e.problems})
    except WorkflowError as e:
        error = str(e)
        context.emit({"type": "error", "message": e.message, "actor": e.actor})
    except OSError as e:
        error = f"{e.filename or 'job directory'}: {e.strerror}" if e.strerror else str(e)
        context.emit({"type": "error", "message": error})
    except Exception as e:  # an engine bug: the job fails with a clear reason
        error = f"internal engine error: {type(e).__name__}: {e}"
        context.emit({"type": "error", "message": error})
    state = {EXIT_FINISHED: "finished", EXIT_STOPPED: "stopped"}.get(code, "failed")
    context.emit({"type": "end", "exit_code": code, "state": state, "error": error})
    events.close()
    return code
