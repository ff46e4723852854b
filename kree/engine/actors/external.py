"""
External: actors that run third-party programs (ExternalExecution, RExpression,
MatlabExpression, PythonScript).

Security rule for every actor here: programs run as argument lists, never
through a shell, with the job directory as working directory, standard input
from a file (never the engine's own, which carries answers), a bounded time
(the timeout parameter) and in a process group of their own that is killed
on timeout, when the engine is stopped, and when the program exits (so
nothing it started outlives it).  Code and values never reach a command line:
code is written to a script file in the job directory, and input values are
turned into literals by serializers that quote every string.
ExternalExecution and PythonScript run arbitrary code and are rejected by the
default actor policy until an admin allows them.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kree.engine import expression
from kree.engine.model import Actor, ParamSpec, PortSpec, WorkflowError

OUTPUT = PortSpec("output", output=True)
TIMEOUT = ParamSpec("timeout", "3600", doc="seconds the program may run before it is killed")
# Each of stdout and stderr is read up to this size; more fails the firing.
MAX_OUTPUT_BYTES = 64 * 1024 * 1024
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ProgramResult:
    __slots__ = ("stdout", "stderr", "exit_code")

    def __init__(self, stdout: str, stderr: str, exit_code: int) -> None:
        self.stdout, self.stderr, self.exit_code = stdout, stderr, exit_code


def run_program(actor: Actor, argv: list[str], *, timeout: float, stdin: str | None = None,
                env: dict[str, str] | None = None) -> ProgramResult:
    """
    Run C{argv} (no shell) in the job directory and wait for it, stop-aware.

    @raise StopRequested: the engine was stopped (the program is killed).
    @raise WorkflowError: the program is missing or ran out of time (killed).
    """
    context = actor.context
    environment = dict(os.environ)
    if "LANG" not in environment and "LC_ALL" not in environment:
        environment["LANG"] = "C.UTF-8"
    environment.update(env or {})
    with tempfile.TemporaryFile() as stdin_file, tempfile.TemporaryFile() as out, \
            tempfile.TemporaryFile() as err:
        if stdin is not None:
            stdin_file.write(stdin.encode("utf-8"))
            stdin_file.seek(0)
        try:
            process = subprocess.Popen(
                argv, stdin=stdin_file, stdout=out, stderr=err, cwd=str(context.job_dir),
                env=environment, start_new_session=True, close_fds=True)
        except FileNotFoundError:
            raise actor.fail(f"program not found: {argv[0]}") from None
        except PermissionError:
            raise actor.fail(f"program not executable: {argv[0]}") from None
        except OSError as e:
            raise actor.fail(f"cannot run {argv[0]}: {e.strerror or e}") from None
        try:
            _wait(actor, process, timeout)
        finally:
            _kill_group(process)
            process.wait()
        return ProgramResult(_read(actor, out, "standard output"),
                             _read(actor, err, "standard error"), process.returncode)


def _wait(actor: Actor, process: subprocess.Popen, timeout: float) -> None:
    """Until the program exits; it is left unreaped (a zombie keeps its group id ours)."""
    deadline = time.monotonic() + timeout
    interval = 0.005
    while not _exited(process):
        actor.context.check_stop()  # StopRequested: the caller's finally kills the group
        left = deadline - time.monotonic()
        if left <= 0:
            raise actor.fail(f"{Path(process.args[0]).name} did not finish within "
                             f"{_seconds(timeout)} s and was killed")
        time.sleep(min(interval, left))
        interval = min(interval * 2, 0.1)


#: Why the sandbox's limits kill a program (kree.engine.sandbox).
_LIMIT_SIGNALS = {signal.SIGXCPU: "its CPU time limit", signal.SIGXFSZ: "its file size limit"}


def describe_exit(code: int) -> str:
    """An exit code as people read it: a signal by name, and the limit it means."""
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"killed by signal {-code}"
    limit = _LIMIT_SIGNALS.get(-code)
    return f"killed by {name}" + (f": it went over {limit}" if limit else "")


def _exited(process: subprocess.Popen) -> bool:
    if hasattr(os, "waitid"):
        try:
            return os.waitid(os.P_PID, process.pid,
                             os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True
    return process.poll() is not None


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(actor: Actor, file, what: str) -> str:
    file.seek(0)
    data = file.read(MAX_OUTPUT_BYTES + 1)
    if len(data) > MAX_OUTPUT_BYTES:
        raise actor.fail(f"the program wrote more than {MAX_OUTPUT_BYTES // (1024 * 1024)} MiB "
                         f"on its {what}")
    return data.decode("utf-8", errors="replace")


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _timeout(actor: Actor) -> float:
    value = actor.param("timeout")
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0
            or math.isinf(value)):
        raise actor.fail("timeout must be a positive number of seconds")
    return float(value)


def _strip_newline(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


def _tail(text: str, lines: int = 20) -> str:
    text = text.strip()
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else "(nothing on standard error)"


def _input_values(actor: Actor) -> dict[str, Any]:
    """One token from each connected input port with a token, by port name."""
    values = {}
    for port in actor.inputs():
        if any(port.has_token(channel) for channel in range(port.width)):
            if port.width == 1:
                values[port.name] = port.get()
            else:  # a multiport linked several times: the array of its channels' tokens
                values[port.name] = [port.get(channel) for channel in range(port.width)
                                     if port.has_token(channel)]
    return values


class _ScriptFiles:
    """Script files with unique names in the job directory (the caller removes them)."""

    def __init__(self, actor: Actor, prefix: str, suffix: str) -> None:
        self.actor, self.prefix, self.suffix = actor, prefix, suffix

    def write(self, text: str) -> Path:
        directory = Path(self.actor.context.job_dir)
        fd, name = tempfile.mkstemp(prefix=self.prefix, suffix=self.suffix, dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return Path(name)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


# -- ExternalExecution ---------------------------------------------------------------


class ExternalExecution(Actor):
    """
    Runs a program with an argument list (never a shell) in the job
    directory and produces what it printed and its exit status.  A non-zero
    exit is not a failure by itself (see exitCode).  Rejected by the default
    actor policy: an admin must allow it.

    Ports: input (optional: its token is written to the program's standard
    input as text), output (standard output, a string), error (standard
    error, a string), exitCode (an int); an input port named command, when
    connected, gives the command instead of the parameter.
    Parameters: command (an array of strings, e.g. {"wc", "-l",
    "inputs/data.csv"}; a plain string is refused), timeout (seconds, default
    3600; then the program is killed and the run fails), environment (a
    record of extra environment variables, default {}).
    """

    class_name = "org.sdm.spa.ExternalExecution"
    ports = (PortSpec("input", input=True), OUTPUT, PortSpec("error", output=True),
             PortSpec("exitCode", output=True))
    parameters = (ParamSpec("command", "{}", doc='an array of strings: {"wc", "-l", "file"}',
                            code=True),
                  TIMEOUT,
                  ParamSpec("environment", "{}", doc="a record of extra environment variables",
                            code=True))

    def initialize(self) -> None:
        super().initialize()
        _timeout(self)
        self._environment()

    def fire(self) -> None:
        command_port = self.port_map.get("command")
        if command_port is not None and command_port.spec.input and command_port.has_token():
            argv = self._check_command(command_port.get())
        else:
            argv = self._command()
        stdin = None
        port = self.input("input")
        if port.width and port.has_token():
            stdin = expression.display(port.get())
        result = run_program(self, argv, timeout=_timeout(self), stdin=stdin,
                             env=self._environment())
        self.output("output").broadcast(result.stdout)
        self.output("error").broadcast(result.stderr)
        self.output("exitCode").broadcast(result.exit_code)

    def _command(self) -> list[str]:
        parameter = self.scope.parameters["command"]
        try:
            value = parameter.value()
        except WorkflowError:
            text = (parameter.text or "").strip()
            if not text.startswith("{"):
                raise self.fail(self._string_refused(text)) from None
            raise
        return self._check_command(value)

    def _check_command(self, value: Any) -> list[str]:
        if isinstance(value, str):
            raise self.fail(self._string_refused(value))
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            raise self.fail('command must be an array of strings, e.g. {"wc", "-l", '
                            '"inputs/data.csv"}')
        if not value or not value[0]:
            raise self.fail("command is empty: name a program to run")
        if any("\0" in a for a in value):
            raise self.fail("command arguments cannot contain NUL characters")
        return value

    @staticmethod
    def _string_refused(text: str) -> str:
        return (f"command must be an array of strings such as {{\"wc\", \"-l\", "
                f"\"inputs/data.csv\"}}, not the string {text!r}: commands never go through a "
                "shell, so write the program and each argument as a separate string")

    def _environment(self) -> dict[str, str]:
        value = self.param("environment")
        if value is None or value == []:  # {} is the empty array in the expression language
            return {}
        if not isinstance(value, dict):
            raise self.fail('environment must be a record such as {LANG="C.UTF-8"}')
        env = {}
        for name, item in value.items():
            if not ENV_NAME.match(name):
                raise self.fail(f"environment variable name {name!r} is not valid")
            text = item if isinstance(item, str) else expression.display(item)
            if "\0" in text:
                raise self.fail(f"environment variable {name} contains a NUL character")
            env[name] = text
        return env


# -- scripts in other languages --------------------------------------------------------


class _ScriptActor(Actor):
    """Runs code from a string parameter with the inputs bound as variables."""

    ports = (OUTPUT,)
    language = ""

    def output_ports(self) -> list:
        """Connected outputs besides `output`: filled from variables of the same name."""
        return [p for p in self.outputs() if p.name != "output" and p.width]

    def initialize(self) -> None:
        super().initialize()
        _timeout(self)

    def run_script(self, argv: list[str], script: Path, *, stdin: str | None = None
                   ) -> ProgramResult:
        try:
            result = run_program(self, argv, timeout=_timeout(self), stdin=stdin)
        finally:
            _remove(script)
        if result.exit_code != 0:
            raise self.fail(f"the {self.language} code failed ({describe_exit(result.exit_code)}):"
                            f"\n{_tail(result.stderr)}")
        return result

    def send_results(self, stdout: str, results: Path | None) -> None:
        values = {}
        if results is not None:
            try:
                values = self.read_results(results)
            finally:
                _remove(results)
        self.output("output").broadcast(_strip_newline(stdout))
        for port in self.output_ports():
            if port.name not in values:
                raise self.fail(f"output port {port.name}: the {self.language} code sets no "
                                f"variable {port.name}")
            port.broadcast(values[port.name])

    def read_results(self, path: Path) -> dict[str, Any]:
        """Variables written by the epilogue: NAME, TYPE, COUNT, then COUNT value lines."""
        try:
            lines = path.read_text("utf-8").split("\n")
        except OSError:
            return {}
        values, i = {}, 0
        while i + 2 < len(lines):
            name, kind, count = lines[i], lines[i + 1], lines[i + 2]
            i += 3
            if kind == "missing":
                continue
            if kind == "unsupported":
                raise self.fail(f"output port {name}: the variable's {self.language} type "
                                f"({count}) cannot be sent (numbers, strings and logicals, "
                                "scalars or vectors, can)")
            n = int(count)
            items = [_parse_item(kind, text) for text in lines[i:i + n]]
            i += n
            values[name] = items[0] if n == 1 else items
        return values


def _parse_item(kind: str, text: str) -> Any:
    if kind == "string":
        return bytes.fromhex(text).decode("utf-8", errors="replace")
    if kind == "logical":
        return text.strip() in ("1", "TRUE", "true")
    if kind == "integer":
        return int(text)
    number = float(text.strip().replace("Inf", "inf").replace("NaN", "nan").replace("NA", "nan"))
    return int(number) if kind == "int" else number


# -- R ---------------------------------------------------------------------------------


def r_literal(value: Any) -> str:
    """An R expression for a plain value; strings are always quoted and escaped."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return repr(value) if abs(value) < 2 ** 53 else repr(float(value))
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Inf" if value > 0 else "-Inf"
        return repr(value)
    if isinstance(value, str):
        return r_string(value)
    if isinstance(value, list):
        if not value:
            return "c()"
        kinds = {_scalar_kind(v) for v in value}
        if len(kinds) == 1 and None not in kinds:
            return "c(" + ", ".join(r_literal(v) for v in value) + ")"
        return "list(" + ", ".join(r_literal(v) for v in value) + ")"
    if isinstance(value, dict):
        return "list(" + ", ".join(f"{r_string(str(k))} = {r_literal(v)}"
                                   for k, v in value.items()) + ")"
    raise ValueError(f"a {type(value).__name__} cannot be passed to R")


def r_string(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code == 0:
            raise ValueError("strings passed to R cannot contain NUL characters")
        elif 0xD800 <= code < 0xE000:
            raise ValueError("the string is not valid Unicode")
        else:
            out.append(f"\\U{{{code:x}}}")
    return '"' + "".join(out) + '"'


def _scalar_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


R_EPILOGUE = r"""
.kree.write <- function(.name, .file) {
  .out <- function(...) cat(..., file = .file, sep = "\n", append = TRUE)
  if (!exists(.name, envir = globalenv(), inherits = FALSE)) {
    .out(.name, "missing", "0"); return(invisible()) }
  .v <- get(.name, envir = globalenv())
  if (is.factor(.v)) .v <- as.character(.v)
  if (!is.atomic(.v) || is.null(.v) || !is.null(dim(.v)) && length(dim(.v)) > 2) {
    .out(.name, "unsupported", class(.v)[1]); return(invisible()) }
  if (is.logical(.v)) {
    .out(.name, "logical", length(.v), ifelse(.v, "1", "0"))
  } else if (is.integer(.v)) {
    .out(.name, "integer", length(.v), as.character(.v))
  } else if (is.numeric(.v)) {
    .out(.name, "double", length(.v), sprintf("%.17g", .v))
  } else if (is.character(.v)) {
    .hex <- vapply(enc2utf8(.v), function(s) paste(as.character(charToRaw(s)), collapse = ""), "")
    .out(.name, "string", length(.v), .hex)
  } else {
    .out(.name, "unsupported", class(.v)[1])
  }
  invisible()
}
"""


class RExpression(_ScriptActor):
    """
    Runs R code (Kepler's RExpression) with Rscript --vanilla in the job
    directory and produces what it printed.  Each connected input port
    becomes an R variable of the same name (numbers, strings, booleans,
    arrays and records, quoted safely); each connected output port besides
    output gets the value of the R variable of the same name (a number,
    string or logical, or an array of them).

    Ports: output (the printed output, a string without its final newline),
    plus the input and output ports the workflow declares.
    Parameters: expression (string: the R code), timeout (seconds, default
    3600; then R is killed and the run fails).  Needs R.
    """

    class_name = "org.ecoinformatics.seek.R.RExpression"
    software = ("R",)
    language = "R"
    parameters = (ParamSpec("expression", "", string=True, doc="the R code", code=True), TIMEOUT)

    def initialize(self) -> None:
        super().initialize()
        self.rscript = self.context.software_path("R")
        if not self.rscript:
            raise self.fail("needs R, which is not installed here")

    def fire(self) -> None:
        lines = []
        for name, value in _input_values(self).items():
            try:
                lines.append(f"assign({r_string(name)}, {r_literal(value)})")
            except ValueError as e:
                raise self.fail(f"input {name}: {e}") from None
        files = _ScriptFiles(self, ".kree-r-", ".R")
        results = None
        code = "\n".join(lines) + "\n" + self.param("expression") + "\n"
        if self.output_ports():
            results = files.write("")
            code += "invisible(local({\n" + R_EPILOGUE
            for port in self.output_ports():
                code += f".kree.write({r_string(port.name)}, {r_string(str(results))})\n"
            code += "}))\n"
        script = files.write(code)
        try:
            result = self.run_script([self.rscript, "--vanilla", str(script)], script)
        except BaseException:
            if results is not None:
                _remove(results)
            raise
        self.send_results(result.stdout, results)


# -- Matlab / Octave ---------------------------------------------------------------------

OCTAVE_KEYWORDS = frozenset("""
__FILE__ __LINE__ break case catch classdef continue do else elseif end end_try_catch
end_unwind_protect endclassdef endenumeration endevents endfor endfunction endif endmethods
endparfor endproperties endspmd endswitch endwhile enumeration events for function global
if methods otherwise parfor persistent properties return spmd switch try until
unwind_protect unwind_protect_cleanup while
""".split())
OCTAVE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def octave_literal(value: Any, *, matlab: bool = False) -> str:
    """
    An Octave (or, with C{matlab}, Matlab) expression for a plain value;
    strings are always quoted and escaped.
    """
    if value is None:
        return "[]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value) if abs(value) < 2 ** 53 else repr(float(value))
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Inf" if value > 0 else "-Inf"
        return repr(value)
    if isinstance(value, str):
        return matlab_string(value) if matlab else octave_string(value)
    if isinstance(value, list):
        if not value:
            return "[]"
        items = [octave_literal(v, matlab=matlab) for v in value]
        if {_scalar_kind(v) for v in value} in ({"number"}, {"bool"}):
            return "[" + ", ".join(items) + "]"
        return "{" + ", ".join(items) + "}"
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            if not OCTAVE_NAME.match(str(key)):
                raise ValueError(f"record field {key!r} is not a valid Matlab/Octave field name")
            literal = octave_literal(item, matlab=matlab)
            if literal.startswith("{"):
                literal = "{" + literal + "}"  # a bare cell would make a struct array
            parts.append(f"'{key}', {literal}")
        return "struct(" + ", ".join(parts) + ")"
    raise ValueError(f"a {type(value).__name__} cannot be passed to Matlab/Octave")


def octave_string(text: str) -> str:
    """An Octave double-quoted string: its UTF-8 bytes, escaped but printable ASCII."""
    out = []
    for byte in text.encode("utf-8"):
        if byte == 0x5C:
            out.append("\\\\")
        elif byte == 0x22:
            out.append('\\"')
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")  # octal: exactly three digits, never greedy
    return '"' + "".join(out) + '"'


def matlab_string(text: str) -> str:
    """A Matlab char array: quoted printable ASCII ('' doubled) and char(...) for the rest."""
    parts, plain, units = [], [], []

    def flush() -> None:
        if plain:
            parts.append("'" + "".join(plain).replace("'", "''") + "'")
            plain.clear()
        if units:
            parts.append("char([" + " ".join(map(str, units)) + "])")
            units.clear()

    data = text.encode("utf-16-le")
    for i in range(0, len(data), 2):
        unit = int.from_bytes(data[i:i + 2], "little")
        if 0x20 <= unit < 0x7F:
            if units:
                flush()
            plain.append(chr(unit))
        else:
            if plain:
                flush()
            units.append(unit)
    flush()
    if not parts:
        return "''"
    return parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"


def octave_name(name: str) -> str:
    if not OCTAVE_NAME.match(name) or name in OCTAVE_KEYWORDS:
        raise ValueError(f"{name!r} is not a valid Matlab/Octave variable name")
    return name


# Writes one variable for read_results (valid Octave and Matlab).
MATLAB_WRITER = r"""
function kree_write__(kree_name__, kree_v__, kree_exists__, kree_file__)
  kree_f__ = fopen(kree_file__, 'a');
  if ~kree_exists__
    fprintf(kree_f__, '%s\nmissing\n0\n', kree_name__);
  elseif ischar(kree_v__) && size(kree_v__, 1) <= 1
    fprintf(kree_f__, '%s\nstring\n1\n%s\n', kree_name__, kree_hex__(kree_v__));
  elseif iscellstr(kree_v__)
    fprintf(kree_f__, '%s\nstring\n%d\n', kree_name__, numel(kree_v__));
    for kree_i__ = 1:numel(kree_v__)
      fprintf(kree_f__, '%s\n', kree_hex__(kree_v__{kree_i__}));
    end
  elseif islogical(kree_v__) && (isvector(kree_v__) || isempty(kree_v__))
    fprintf(kree_f__, '%s\nlogical\n%d\n', kree_name__, numel(kree_v__));
    fprintf(kree_f__, '%d\n', kree_v__);
  elseif isnumeric(kree_v__) && isreal(kree_v__) && (isvector(kree_v__) || isempty(kree_v__))
    if isinteger(kree_v__)
      fprintf(kree_f__, '%s\nint\n%d\n', kree_name__, numel(kree_v__));
    else
      fprintf(kree_f__, '%s\ndouble\n%d\n', kree_name__, numel(kree_v__));
    end
    fprintf(kree_f__, '%.17g\n', double(kree_v__));
  else
    fprintf(kree_f__, '%s\nunsupported\n%s\n', kree_name__, class(kree_v__));
  end
  fclose(kree_f__);
end

function kree_h__ = kree_hex__(kree_s__)
  kree_h__ = sprintf('%02x', unicode2native(kree_s__, 'UTF-8'));
end
"""


class MatlabExpression(_ScriptActor):
    """
    Runs Matlab code (Ptolemy's MatlabExpression) with Matlab, or with GNU
    Octave when Matlab is absent, in the job directory and produces what it
    printed.  Each connected input port becomes a variable of the same name
    (numbers, strings, booleans, arrays and records, quoted safely); each
    connected output port besides output gets the value of the variable of
    the same name (a number, string or logical, or a vector of them).

    Ports: output (the printed output, a string without its final newline),
    plus the input and output ports the workflow declares.
    Parameters: expression (string: the Matlab/Octave code), timeout
    (seconds, default 3600; then the program is killed and the run fails).
    Needs one of Matlab or Octave.
    """

    class_name = "ptolemy.matlab.Expression"
    # Not in `software`: the model requires every name listed there.
    software = ()
    # One of these is needed (Matlab preferred).
    software_any = ("Matlab", "Octave")
    language = "Matlab/Octave"
    parameters = (ParamSpec("expression", "", string=True, doc="the Matlab/Octave code",
                            code=True),
                  TIMEOUT)

    def initialize(self) -> None:
        super().initialize()
        # The runner detected software_any before the run (and validation
        # refused the workflow if neither exists); this guards direct use.
        self.matlab = self.context.software_path("Matlab")
        self.octave = None if self.matlab else self.context.software_path("Octave")
        if not self.matlab and not self.octave:
            raise self.fail("needs Matlab or Octave, which is not installed here")
        self.language = "Matlab" if self.matlab else "Octave"

    def fire(self) -> None:
        matlab = bool(self.matlab)
        literal = matlab_string if matlab else octave_string
        lines = []
        for name, value in _input_values(self).items():
            try:
                lines.append(f"{octave_name(name)} = {octave_literal(value, matlab=matlab)};")
            except ValueError as e:
                raise self.fail(f"input {name}: {e}") from None
        code = "\n".join(lines) + "\n" + self.param("expression") + "\n"
        files = _ScriptFiles(self, "kree_m_", ".m")
        results = None
        if self.output_ports():
            for port in self.output_ports():
                try:
                    octave_name(port.name)
                except ValueError as e:
                    raise self.fail(f"output port {port.name}: {e}") from None
            results = files.write("")
            path = literal(str(results))
            for port in self.output_ports():
                name = literal(port.name)
                code += (f"\nif exist({name}, 'var')\n  kree_write__({name}, {port.name}, true, "
                         f"{path});\nelse\n  kree_write__({name}, [], false, {path});\nend\n")
            # Octave wants a script's functions before their use, Matlab at the end.
            code = "1;\n" + MATLAB_WRITER + code if not matlab else code + MATLAB_WRITER
        script = files.write(code)
        if matlab:
            argv = [self.matlab, "-nodisplay", "-nosplash", "-batch",
                    f"run({matlab_string(str(script))})"]
        else:
            argv = [self.octave, "--no-gui", "--quiet", "--norc", "--no-history",
                    "--no-window-system", str(script)]
        try:
            result = self.run_script(argv, script)
        except BaseException:
            if results is not None:
                _remove(results)
            raise
        self.send_results(result.stdout, results)


# -- Python --------------------------------------------------------------------------------

PYTHON_PRELUDE = """\
import json as _json, keyword as _keyword, sys as _sys
inputs = _json.loads(_sys.stdin.read() or "{}")
_path = _sys.argv[1]
_sys.argv = _sys.argv[1:]
_globals = {"__name__": "__main__", "__file__": _path, "__builtins__": __builtins__,
            "inputs": inputs}
for _name, _value in inputs.items():
    if _name.isidentifier() and not _keyword.iskeyword(_name):
        _globals[_name] = _value
with open(_path, encoding="utf-8") as _f:
    _code = compile(_f.read(), _path, "exec")
exec(_code, _globals)
"""


class PythonScript(_ScriptActor):
    """
    Runs Python code in a separate Python interpreter (isolated mode,
    never in the engine's own process) in the job directory and produces
    what it printed.  The values of the connected input ports are passed as
    JSON on standard input and bound as variables: all of them in the dict
    inputs, and each whose port name is a Python identifier under that name.
    Rejected by the default actor policy: an admin must allow it.

    Ports: output (the printed output, a string without its final newline),
    plus the input ports the workflow declares.
    Parameters: script (string: the Python code, which prints its result),
    timeout (seconds, default 3600; then the interpreter is killed and the
    run fails).
    """

    class_name = "ptolemy.actor.lib.python.PythonScript"
    language = "Python"
    parameters = (ParamSpec("script", "", string=True, code=True,
                            doc="the Python code; it prints its result"), TIMEOUT)

    def output_ports(self) -> list:
        return []

    def initialize(self) -> None:
        super().initialize()
        for port in self.outputs():
            if port.name != "output" and port.width:
                raise self.fail(f"output port {port.name}: only output (what the script "
                                "prints) is produced; print the result instead")

    def fire(self) -> None:
        try:
            stdin = json.dumps(_input_values(self), ensure_ascii=False)
        except (TypeError, ValueError) as e:
            raise self.fail(f"the inputs cannot be passed to Python: {e}") from None
        script = _ScriptFiles(self, ".kree-py-", ".py").write(self.param("script") + "\n")
        python = sys.executable or self.context.software_path("Python")
        result = self.run_script([python, "-I", "-c", PYTHON_PRELUDE, str(script)], script,
                                 stdin=stdin)
        self.send_results(result.stdout, None)
