"""
Domain errors.

Each error knows the HTTP status and the stable error code the API answers
with (DESIGN.md section 3), so the mapping lives in one place and the API
layer never guesses.
"""

from __future__ import annotations

from typing import Any


class KreeError(Exception):
    """Base of all errors that KREE reports to a caller."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class HttpError(KreeError):
    """An error whose status and code are chosen where it is raised (by a dialect)."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.status = status
        self.code = code


class InvalidTransition(KreeError):
    """An action that the state machine does not allow in the job's state."""

    status = 409
    code = "invalid_state"

    def __init__(self, state, action, reason: str | None = None, allowed=()) -> None:
        state = str(state)
        action = str(action)
        allowed = [str(a) for a in allowed]
        message = reason or (
            f"cannot {action} a job in state {state}"
            + (f" (allowed: {', '.join(allowed)})" if allowed else " (no action allowed)")
        )
        super().__init__(message, state=state, action=action, allowed=allowed)
        self.state = state
        self.action = action


class JobNotFound(KreeError):
    status = 404
    code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}", job=job_id)
        self.job_id = job_id


class NotWaiting(KreeError):
    """Asking for (or answering) the prompt of a job that is not WAITING for input."""

    status = 409
    code = "not_waiting"


class EngineUnavailable(KreeError):
    """The engine program could not say what it offers (it failed to start or answer)."""

    status = 503
    code = "engine_unavailable"


class FrontendNotFound(KreeError):
    status = 404
    code = "frontend_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"no frontend {name!r}", frontend=name)


class Unauthenticated(KreeError):
    """A request without a client certificate."""

    status = 401
    code = "unauthenticated"


class UnknownFrontend(KreeError):
    """A verified certificate that is not registered as a frontend."""

    status = 403
    code = "unknown_frontend"


class FrontendRevoked(KreeError):
    status = 403
    code = "frontend_revoked"


class Conflict(KreeError):
    """The request clashes with what already exists (a duplicate name, say)."""

    status = 409
    code = "conflict"


class NotAllowed(KreeError):
    status = 403
    code = "forbidden"


class InvalidRequest(KreeError):
    status = 400
    code = "invalid_request"


class ConfigError(KreeError):
    """Configuration problems, all of them at once."""

    code = "invalid_configuration"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems), problems=problems)
        self.problems = problems


class DatabaseBehind(KreeError):
    """The database schema is older than this version of KREE expects."""

    status = 503
    code = "database_behind"


class DatabaseUnknown(KreeError):
    """The database is newer than this KREE, or is not a KREE database at all."""

    status = 503
    code = "database_unknown"


class DatabaseUnavailable(KreeError):
    """
    The database did not answer (restarting, unreachable, overloaded) for as
    long as the store waits; nothing is wrong with the request, try it again.
    """

    status = 503
    code = "database_unavailable"
