"""
What a job request may contain, checked: parameters by full name, inputs by
name and URI, resources, and workflow URIs.

Every check raises an ApiError-compatible KreeError (422) naming the field,
so the API, the feasibility check and the console refuse the same things with
the same words.  Deep checks of URIs (allowed hosts, addresses inside the
host) happen at fetch time, in kree.fetch.
"""

from __future__ import annotations

import math
import re
from typing import Any, Collection
from urllib.parse import urlsplit

import attrs

from kree.errors import KreeError

MAX_PARAMETERS = 1000
MAX_INPUTS = 1000
# Hard upper bounds, whatever the configuration says: a year of seconds,
# 64 TiB of memory.  [supervisor] max_walltime_seconds is usually far lower.
MAX_DURATION_SECONDS = 366 * 24 * 3600
MAX_MEMORY_BYTES = 64 * 1024**4
MAX_CPUS = 4096
MAX_PROCESSES = 1_000_000
MAX_NAME_LENGTH = 1000
MAX_URI_LENGTH = 4096
WORKFLOW_SCHEMES = ("https", "http", "file", "kree")
INPUT_SCHEMES = ("https", "http", "file")
KREE_WORKFLOW = re.compile(r"^kree:workflow/([0-9a-f]{64})$")
INPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_DURATION = re.compile(r"^(?:(?:(\d+)-)?(\d+):)?(\d+):(\d+)$")


class InvalidJobSpec(KreeError):
    status = 422

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.code = code


@attrs.frozen
class WalltimeLimits:
    """
    [supervisor] default_walltime_seconds and max_walltime_seconds: a job
    that names no walltime is held to the default by the supervisor's
    monitor, so no run is without an end (its resources stay as asked, so a
    batch system applies its own partition default); one that asks for more
    than the maximum is refused (422).
    """

    maximum: int = 14 * 24 * 3600

    @classmethod
    def from_config(cls, supervisor) -> "WalltimeLimits":
        return cls(int(supervisor.max_walltime_seconds))

    def apply(self, resources: dict[str, Any]) -> dict[str, Any]:
        """C{resources}, checked: a walltime over the maximum is refused."""
        walltime = resources.get("walltime")
        if walltime is None:
            return resources
        if walltime > self.maximum:
            raise InvalidJobSpec(
                "invalid_resources",
                f"walltime: at most {self.maximum} seconds on this server, not {walltime}",
                field="walltime", maximum=self.maximum)
        return resources


#: A CWL input id as a parameter name (C{message}): no period, so it is never
#: taken for a Ptolemy name without its leading one (C{Ramp.step}).
CWL_INPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$")


def check_full_name(name: Any) -> str:
    """
    A parameter's name: a Ptolemy full name, C{.model.actor.param} (names
    never contain periods), or a CWL input id (L{CWL_INPUT_NAME}).  Whether
    the workflow has it is checked against the workflow (kree.jobs).
    """
    if isinstance(name, str) and CWL_INPUT_NAME.match(name):
        return name
    if (
        not isinstance(name, str)
        or len(name) > MAX_NAME_LENGTH
        or not name.startswith(".")
        or any(part.strip() == "" for part in name[1:].split("."))
        or not name.isprintable()
    ):
        raise InvalidJobSpec(
            "invalid_parameter",
            f"parameter name {name!r} is not a full name such as .model.Ramp.step "
            "(or a CWL input id such as message)",
            parameter=name if isinstance(name, str) else repr(name),
        )
    return name


def check_parameters(value: Any, *, allow_null: bool = False) -> dict[str, Any]:
    """Parameters by full name; values are JSON scalars or arrays (null removes, in PATCH)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidJobSpec("invalid_parameter", "parameters must be an object of full name: value")
    if len(value) > MAX_PARAMETERS:
        raise InvalidJobSpec("invalid_parameter", f"at most {MAX_PARAMETERS} parameters",
                             limit=MAX_PARAMETERS)
    for name, v in value.items():
        check_full_name(name)
        if v is None and allow_null:
            continue
        if v is None or isinstance(v, dict) or not _finite(v):
            raise InvalidJobSpec(
                "invalid_parameter",
                f"parameter {name}: value must be a string, finite number, boolean or array",
                parameter=name,
            )
    return dict(value)


def _finite(value: Any) -> bool:
    """No NaN or infinity anywhere in a value (they are not JSON)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def check_uri(uri: Any, *, schemes=WORKFLOW_SCHEMES, field: str = "workflow") -> str:
    if not isinstance(uri, str) or not uri or len(uri) > MAX_URI_LENGTH:
        raise InvalidJobSpec("invalid_uri", f"{field}: a URI of at most {MAX_URI_LENGTH} characters is required",
                             field=field)
    try:
        parts = urlsplit(uri)
    except ValueError as e:
        raise InvalidJobSpec("invalid_uri", f"{field}: {e}", field=field) from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise InvalidJobSpec(
            "uri_not_allowed",
            f"{field}: scheme {scheme or '(none)'!r} is not allowed (allowed: {', '.join(schemes)})",
            field=field,
            uri=uri,
        )
    if scheme in ("http", "https") and not parts.hostname:
        raise InvalidJobSpec("invalid_uri", f"{field}: {uri!r} has no host", field=field)
    if scheme == "file" and not parts.path.startswith("/"):
        raise InvalidJobSpec("invalid_uri", f"{field}: a file: URI needs an absolute path", field=field)
    if scheme == "kree" and not KREE_WORKFLOW.match(uri):
        raise InvalidJobSpec(
            "invalid_uri", f"{field}: kree: URIs look like kree:workflow/<sha256>", field=field
        )
    if any(c in uri for c in "\r\n\t\x00 "):
        raise InvalidJobSpec("invalid_uri", f"{field}: the URI contains white space", field=field)
    return uri


def uploaded_workflow_sha256(uri: str) -> str | None:
    """The hash in a C{kree:workflow/<sha256>} URI, or None for other URIs."""
    m = KREE_WORKFLOW.match(uri)
    return m.group(1) if m else None


def check_input_name(name: Any) -> str:
    """Input names become file names in the job directory: no path tricks."""
    if not isinstance(name, str) or not INPUT_NAME.match(name) or ".." in name:
        raise InvalidJobSpec(
            "invalid_input",
            f"input name {name!r}: use letters, digits, '.', '_' and '-', starting with a "
            "letter or digit (at most 255)",
            input=name if isinstance(name, str) else repr(name),
        )
    return name


def check_inputs(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidJobSpec("invalid_input", "inputs must be an object of name: URI")
    if len(value) > MAX_INPUTS:
        raise InvalidJobSpec("invalid_input", f"at most {MAX_INPUTS} inputs, not {len(value)}",
                             limit=MAX_INPUTS)
    return {
        check_input_name(name): check_uri(uri, schemes=INPUT_SCHEMES, field=f"inputs.{name}")
        for name, uri in value.items()
    }


def parse_size(value: Any, field: str, maximum: int = MAX_MEMORY_BYTES) -> int:
    """Bytes from an integer or a string such as C{"512M"} or C{"4GiB"}, at most C{maximum}."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and len(value) <= 64:
        m = _SIZE.match(value.strip())
        if m:
            unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
            size = float(m.group(1)) * _UNITS[unit]
            if math.isfinite(size):
                number = int(size)
    if number is None or number <= 0:
        raise InvalidJobSpec("invalid_resources",
                             f"{field}: a positive size such as 4096, \"512M\" or \"4G\"",
                             field=field)
    if number > maximum:
        raise InvalidJobSpec("invalid_resources", f"{field}: at most {maximum} bytes",
                             field=field, maximum=maximum)
    return number


def parse_duration(value: Any, field: str, maximum: int = MAX_DURATION_SECONDS) -> int:
    """Seconds from a number or Slurm's C{[D-]HH:MM:SS} or C{MM:SS}, at most C{maximum}."""
    total = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # A float from JSON is finite (the parser refuses the rest), but this
        # is also called on values from elsewhere.
        if isinstance(value, int) or math.isfinite(value):
            total = value
    elif isinstance(value, str) and len(value) <= 64:
        m = _DURATION.match(value.strip())
        if m:
            days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
            total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total is None or total <= 0:
        raise InvalidJobSpec("invalid_resources",
                             f"{field}: a positive number of seconds or [D-]HH:MM:SS", field=field)
    if total > maximum:
        raise InvalidJobSpec("invalid_resources", f"{field}: at most {maximum} seconds",
                             field=field, maximum=maximum)
    return max(1, int(total))


def check_resources(value: Any, backends: Collection[str], *,
                    installed: Collection[str] = ()) -> dict[str, Any]:
    """
    Resources, normalised: backend, cpus, memory (bytes), walltime (seconds),
    priority, input_timeout (seconds), partition, outputs_to (URL), and what
    the sandbox gives: network (a boolean), cpu_time (CPU seconds per
    process), processes (of the engine account), file_size (bytes per file).

    @param backends: the backends this server offers (C{Config.backends}).
    @param installed: names accepted too although not offered (feasibility
        says why such a job cannot run instead of refusing the question).
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidJobSpec("invalid_resources", "resources must be an object")
    known = ("backend", "cpus", "memory", "walltime", "priority", "input_timeout", "partition",
             "outputs_to", "network", "cpu_time", "processes", "file_size")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise InvalidJobSpec("invalid_resources", f"unknown resources {unknown} (known: {', '.join(known)})",
                             unknown=unknown)
    out: dict[str, Any] = {}
    if "backend" in value:
        backend = value["backend"]
        if not isinstance(backend, str) or (backend not in backends
                                            and backend not in installed):
            raise InvalidJobSpec(
                "invalid_resources", f"backend {backend!r} is not enabled on this server "
                f"(offered: {', '.join(backends)})", field="backend")
        out["backend"] = backend
    if "cpus" in value:
        cpus = value["cpus"]
        if not isinstance(cpus, int) or isinstance(cpus, bool) or not 1 <= cpus <= MAX_CPUS:
            raise InvalidJobSpec("invalid_resources",
                                 f"cpus must be an integer from 1 to {MAX_CPUS}",
                                 field="cpus", maximum=MAX_CPUS)
        out["cpus"] = cpus
    if "memory" in value:
        out["memory"] = parse_size(value["memory"], "memory")
    if "walltime" in value:
        out["walltime"] = parse_duration(value["walltime"], "walltime")
    if "input_timeout" in value:
        out["input_timeout"] = parse_duration(value["input_timeout"], "input_timeout")
    if "priority" in value:
        priority = value["priority"]
        if not isinstance(priority, int) or isinstance(priority, bool) or not -1000 <= priority <= 1000:
            raise InvalidJobSpec("invalid_resources", "priority must be an integer from -1000 to 1000",
                                 field="priority")
        out["priority"] = priority
    # What the sandbox gives the job (kree.sandbox judges them against [sandbox]).
    if "network" in value:
        if not isinstance(value["network"], bool):
            raise InvalidJobSpec("invalid_resources", "network must be true or false",
                                 field="network")
        out["network"] = value["network"]
    if "cpu_time" in value:
        out["cpu_time"] = parse_duration(value["cpu_time"], "cpu_time")
    if "processes" in value:
        processes = value["processes"]
        if (not isinstance(processes, int) or isinstance(processes, bool)
                or not 1 <= processes <= MAX_PROCESSES):
            raise InvalidJobSpec("invalid_resources",
                                 f"processes must be an integer from 1 to {MAX_PROCESSES}",
                                 field="processes", maximum=MAX_PROCESSES)
        out["processes"] = processes
    if "file_size" in value:
        out["file_size"] = parse_size(value["file_size"], "file_size")
    if "outputs_to" in value:
        # Where products go when the job finishes; the API checks the URL
        # against the allowed hosts (kree.outputs.check_outputs_to).
        if not isinstance(value["outputs_to"], str):
            raise InvalidJobSpec("invalid_resources", "outputs_to must be a URL (a string)",
                                 field="outputs_to")
        out["outputs_to"] = value["outputs_to"]
    if "partition" in value:
        partition = value["partition"]
        if not isinstance(partition, str) or not re.match(r"^[A-Za-z0-9_.-]{1,64}$", partition):
            raise InvalidJobSpec("invalid_resources", "partition must be a Slurm partition name",
                                 field="partition")
        out["partition"] = partition
    return out
