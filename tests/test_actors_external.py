"""
The interaction and external actors: UserInput, ExternalExecution,
PythonScript, RExpression and MatlabExpression, run through the engine
(run_job in this process, or `python -m kree.engine run` as a real
subprocess where stdin, answer files and signals matter).  R and Octave are
used for real; their tests skip only when the program is absent.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest

from kree.engine import expression
from kree.engine.actors import external
from kree.engine.protocol import EngineContext
from kree.engine.runner import check, run_job

REPO = Path(__file__).resolve().parents[1]
SDF = "ptolemy.domains.sdf.kernel.SDFDirector"
ALLOW_ALL = {"org.sdm.spa.ExternalExecution": "allow",
             "ptolemy.actor.lib.python.PythonScript": "allow"}
STRING = "ptolemy.kernel.util.StringAttribute"

needs_r = pytest.mark.skipif(shutil.which("Rscript") is None,
                             reason="R is not installed (.ci/run installs r-base-core)")
needs_octave = pytest.mark.skipif(
    shutil.which("octave-cli") is None and shutil.which("octave") is None,
    reason="Octave is not installed (.ci/run installs octave)")


# -- building and running workflows -------------------------------------------------------


def prop(name, value, string=False):
    cls = f" class={quoteattr(STRING)}" if string else ""
    return f"<property name={quoteattr(name)}{cls} value={quoteattr(str(value))}/>"


def entity(name, cls, *properties, inputs=(), outputs=()):
    ports = "".join(f'<port name="{p}" class="ptolemy.actor.TypedIOPort"><property name="input"/>'
                    "</port>" for p in inputs)
    ports += "".join(f'<port name="{p}" class="ptolemy.actor.TypedIOPort">'
                     '<property name="output"/></port>' for p in outputs)
    return f'<entity name="{name}" class="{cls}">{"".join(properties)}{ports}</entity>'


def const(name, value):
    return entity(name, "ptolemy.actor.lib.Const", prop("value", value))


def string_const(name, value):
    return entity(name, "ptolemy.actor.lib.StringConst", prop("value", value, string=True))


def display(name="Display"):
    return entity(name, "ptolemy.actor.lib.gui.Display")


def moml(entities, links, iterations=1):
    """links: (source port, destination port, ...) tuples, one relation each."""
    relations, link_lines = [], []
    for i, ports in enumerate(links):
        relations.append(f'<relation name="r{i}" class="ptolemy.actor.TypedIORelation"/>')
        link_lines += [f'<link port="{p}" relation="r{i}"/>' for p in ports]
    return ('<?xml version="1.0"?>\n<entity name="model" class="ptolemy.actor.TypedCompositeActor">'
            f'<property name="SDF Director" class="{SDF}">'
            f'<property name="iterations" value="{iterations}"/></property>'
            + "".join(entities) + "".join(relations) + "".join(link_lines) + "</entity>")


def make_job(path: Path, xml: str, policy=None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "workflow.xml").write_text(xml)
    if policy is not None:
        (path / "policy.json").write_text(json.dumps(policy))
    return path


def read_events(job: Path) -> list[dict]:
    text = (job / "events.jsonl").read_text() if (job / "events.jsonl").exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def texts(events, actor=".model.Display"):
    return [e["text"] for e in events if e["type"] == "message" and e["actor"] == actor]


def error(events):
    return next(e for e in events if e["type"] == "end")["error"]


@pytest.fixture(autouse=True)
def _keep_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # run_job changes directory; restored afterwards


def run(tmp_path, xml, policy=ALLOW_ALL, name="job"):
    job = make_job(tmp_path / name, xml, policy)
    code = run_job(job, use_fd3=False, install_signals=False, stdin_fd=None)
    return code, read_events(job)


def external_execution(name, command, *properties, inputs=()):
    return entity(name, "org.sdm.spa.ExternalExecution", prop("command", command), *properties,
                  inputs=inputs)


# -- ExternalExecution ----------------------------------------------------------------------


def test_external_execution_output_error_and_exit_code(tmp_path):
    xml = moml([external_execution("Ext", '{"sh", "-c", "printf %s out; printf err >&2; exit 3"}'),
                display("Out"), display("Err"), display("Code")],
               [("Ext.output", "Out.input"), ("Ext.error", "Err.input"),
                ("Ext.exitCode", "Code.input")])
    code, events = run(tmp_path, xml)
    assert code == 0, events
    assert texts(events, ".model.Out") == ["out"]
    assert texts(events, ".model.Err") == ["err"]
    assert texts(events, ".model.Code") == ["3"]  # a non-zero exit is no failure


def test_external_execution_argument_list_and_job_directory(tmp_path):
    # printf gets "%s" and "x; echo injected" as two arguments: no shell anywhere.
    xml = moml([external_execution("Ext", '{"printf", "%s|%s", "x; echo $HOME", "`id`"}'),
                external_execution("Pwd", '{"pwd"}'), display(), display("Dir")],
               [("Ext.output", "Display.input"), ("Pwd.output", "Dir.input")])
    code, events = run(tmp_path, xml)
    assert code == 0, events
    assert texts(events) == ["x; echo $HOME|`id`"]
    assert texts(events, ".model.Dir") == [str((tmp_path / "job").resolve()) + "\n"]


def test_external_execution_stdin_and_environment(tmp_path):
    xml = moml([string_const("Text", "line one\nline two"),
                external_execution("Ext", '{"sh", "-c", "cat; printf \\" %s\\" \\"$KREE_X\\""}',
                                   prop("environment", '{KREE_X="a b"}'), inputs=()),
                display()],
               [("Text.output", "Ext.input"), ("Ext.output", "Display.input")])
    code, events = run(tmp_path, xml)
    assert code == 0, events
    assert texts(events) == ["line one\nline two a b"]


def test_external_execution_missing_program(tmp_path):
    xml = moml([external_execution("Ext", '{"no-such-program-kree", "x"}'), display()],
               [("Ext.output", "Display.input")])
    code, events = run(tmp_path, xml)
    assert code == 1
    assert error(events) == ".model.Ext: program not found: no-such-program-kree"


@pytest.mark.parametrize("command", ['"ls -l"', "ls -l"])
def test_external_execution_refuses_a_string_command(tmp_path, command):
    xml = moml([external_execution("Ext", command), display()], [("Ext.output", "Display.input")])
    code, events = run(tmp_path, xml)
    assert code == 1
    assert "command must be an array of strings" in error(events)
    assert "ls -l" in error(events)


def test_external_execution_rejected_by_default_policy(tmp_path):
    xml = moml([external_execution("Ext", '{"true"}'), display()],
               [("Ext.output", "Display.input")])
    checked = check(xml.encode(), context=EngineContext(tmp_path, None, software={}))
    assert checked.problems == [".model.Ext: actor class org.sdm.spa.ExternalExecution is not "
                                "allowed on this server"]
    code, events = run(tmp_path, xml, policy=None)
    assert code == 1
    assert "not allowed on this server" in error(events)
    assert check(xml.encode(), policy=ALLOW_ALL,
                 context=EngineContext(tmp_path, None, software={})).problems == []


def test_external_execution_timeout_kills_the_process_group(tmp_path):
    xml = moml([external_execution("Ext", '{"sh", "-c", "sleep 30 & echo $! > child.pid; wait"}',
                                   prop("timeout", "0.5")), display()],
               [("Ext.output", "Display.input")])
    started = time.monotonic()
    code, events = run(tmp_path, xml)
    assert time.monotonic() - started < 10
    assert code == 1
    assert error(events) == ".model.Ext: sh did not finish within 0.5 s and was killed"
    child = int((tmp_path / "job" / "child.pid").read_text())
    assert wait_gone(child), "the program's child survived the timeout"


def wait_gone(pid, seconds=5.0) -> bool:
    """The process is gone (or a zombie waiting for init): killed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_external_execution_stop_kills_the_program(tmp_path):
    xml = moml([external_execution("Ext", '{"sh", "-c", "echo $$ > sh.pid; exec sleep 30"}'),
                display()], [("Ext.output", "Display.input")])
    job = make_job(tmp_path / "job", xml, ALLOW_ALL)
    engine = start_engine(job, stdin=subprocess.DEVNULL)
    try:
        pid_file = job / "sh.pid"
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(10) == 3
    finally:
        engine.kill()
        engine.wait()
    assert wait_gone(int(pid_file.read_text()))
    assert read_events(job)[-1]["state"] == "stopped"


# -- PythonScript -----------------------------------------------------------------------------


def python_script(name, script, inputs=()):
    return entity(name, "ptolemy.actor.lib.python.PythonScript",
                  prop("script", script, string=True), inputs=inputs)


def test_python_script_inputs_and_output(tmp_path):
    script = 'print(x * 2, s, inputs["x"], sorted(inputs))\n'
    xml = moml([const("X", "21"), string_const("S", 'h\u00e9 "q"'),
                python_script("Py", script, inputs=("x", "s")), display()],
               [("X.output", "Py.x"), ("S.output", "Py.s"), ("Py.output", "Display.input")])
    code, events = run(tmp_path, xml)
    assert code == 0, events
    assert texts(events) == ["42 h\u00e9 \"q\" 21 ['s', 'x']"]


def test_python_script_runs_in_a_separate_isolated_interpreter(tmp_path):
    script = "import os, sys\nprint(os.getpid(), sys.flags.isolated, os.getcwd())\n"
    xml = moml([python_script("Py", script), display()], [("Py.output", "Display.input")])
    code, events = run(tmp_path, xml)
    assert code == 0, events
    pid, isolated, cwd = texts(events)[0].split(" ", 2)
    assert int(pid) != os.getpid()
    assert isolated == "1"
    assert cwd == str((tmp_path / "job").resolve())
    assert not list((tmp_path / "job").glob(".kree-py-*")), "the script file was left behind"


def test_python_script_failure_reports_the_traceback(tmp_path):
    xml = moml([python_script("Py", "x = 1\nraise ValueError('bad value')\n"), display()],
               [("Py.output", "Display.input")])
    code, events = run(tmp_path, xml)
    assert code == 1
    message = error(events)
    assert message.startswith(".model.Py: the Python code failed (exit code 1)")
    assert "ValueError: bad value" in message


def test_python_script_rejected_by_default_policy(tmp_path):
    xml = moml([python_script("Py", "print(1)"), display()], [("Py.output", "Display.input")])
    checked = check(xml.encode(), context=EngineContext(tmp_path, None, software={}))
    assert checked.problems == [".model.Py: actor class ptolemy.actor.lib.python.PythonScript "
                                "is not allowed on this server"]


def test_python_script_timeout(tmp_path):
    xml = moml([entity("Py", "ptolemy.actor.lib.python.PythonScript",
                       prop("script", "import time\ntime.sleep(30)", string=True),
                       prop("timeout", "0.3")), display()],
               [("Py.output", "Display.input")])
    code, events = run(tmp_path, xml)
    assert code == 1
    assert "did not finish within 0.3 s and was killed" in error(events)


# -- R ------------------------------------------------------------------------------------------


def r_expression(name, code, inputs=(), outputs=()):
    return entity(name, "org.ecoinformatics.seek.R.RExpression",
                  prop("expression", code, string=True), inputs=inputs, outputs=outputs)


def test_r_needs_r(tmp_path):
    xml = moml([const("Const", "3"), r_expression("R", "cat(x * 2)", inputs=("x",)), display()],
               [("Const.output", "R.x"), ("R.output", "Display.input")])
    checked = check(xml.encode(), context=EngineContext(tmp_path, None, software={}))
    assert checked.problems == [".model.R: needs R, which is not installed here"]


@needs_r
def test_r_expression_inputs_and_output(tmp_path):
    xml = moml([const("Const", "3"), r_expression("R", "cat(x * 2)", inputs=("x",)), display()],
               [("Const.output", "R.x"), ("R.output", "Display.input")])
    code, events = run(tmp_path, xml, policy=None)
    assert code == 0, events
    assert texts(events) == ["6"]
    assert not list((tmp_path / "job").glob(".kree-r-*")), "the script file was left behind"


TRICKY = 'a"b\\c\'d\n\t7e\u00e9\u4e2d\U0001F600 "); system("touch pwned"); ("'


@needs_r
def test_r_expression_quotes_strings_and_converts_values(tmp_path):
    code_r = ('cat(s, "|", class(n), length(v), sum(v), class(b), b, "|", names(rec), '
              'rec$k, sep = "")')
    xml = moml([string_const("S", TRICKY), const("N", "2.5"), const("V", "{1, 2, 3}"),
                const("B", "true"), const("Rec", '{j=1, k="kay"}'),
                r_expression("R", code_r, inputs=("s", "n", "v", "b", "rec")), display()],
               [("S.output", "R.s"), ("N.output", "R.n"), ("V.output", "R.v"),
                ("B.output", "R.b"), ("Rec.output", "R.rec"), ("R.output", "Display.input")])
    code, events = run(tmp_path, xml, policy=None)
    assert code == 0, events
    assert texts(events) == [TRICKY + "|numeric36logicalTRUE|jkkay"]
    assert not (tmp_path / "job" / "pwned").exists()


@needs_r
def test_r_expression_output_ports_from_variables(tmp_path):
    code_r = 'y <- x + 1\nz <- c("a", "\u00e9")\nflag <- x > 2\nn <- 7L\nprint("done")'
    xml = moml([const("Const", "3"),
                r_expression("R", code_r, inputs=("x",), outputs=("y", "z", "flag", "n")),
                display(), display("Y"), display("Z"), display("Flag"), display("N")],
               [("Const.output", "R.x"), ("R.output", "Display.input"), ("R.y", "Y.input"),
                ("R.z", "Z.input"), ("R.flag", "Flag.input"), ("R.n", "N.input")])
    code, events = run(tmp_path, xml, policy=None)
    assert code == 0, events
    assert texts(events) == ['[1] "done"']
    assert texts(events, ".model.Y") == [expression.display(4.0)]
    assert texts(events, ".model.Z") == [expression.display(["a", "\u00e9"])]
    assert texts(events, ".model.Flag") == ["true"]
    assert texts(events, ".model.N") == ["7"]


@needs_r
def test_r_expression_errors(tmp_path):
    xml = moml([r_expression("R", 'stop("no luck here")'), display()],
               [("R.output", "Display.input")])
    code, events = run(tmp_path, xml, policy=None)
    assert code == 1
    assert error(events).startswith(".model.R: the R code failed (exit code 1)")
    assert "no luck here" in error(events)
    xml = moml([r_expression("R", "x <- 1", outputs=("y",)), display("Y")],
               [("R.y", "Y.input")])
    code, events = run(tmp_path, xml, policy=None, name="job2")
    assert code == 1
    assert error(events) == ".model.R: output port y: the R code sets no variable y"


# -- Matlab / Octave --------------------------------------------------------------------------


def matlab_expression(name, code, inputs=(), outputs=()):
    return entity(name, "ptolemy.matlab.Expression", prop("expression", code, string=True),
                  inputs=inputs, outputs=outputs)


@needs_octave
def test_matlab_expression_with_octave(tmp_path):
    code_m = ('printf("%d|%s|%d|%g|%s|", x * 2, s, numel(v), sum(v), class(b));\n'
              'printf("%s|%d\\n", rec.k, rec.j);\ny = x + 0.5;\nw = {"a", "\u00e9"};')
    xml = moml([const("Const", "3"), string_const("S", TRICKY), const("V", "{1, 2, 3}"),
                const("B", "false"), const("Rec", '{j=1, k="kay"}'),
                matlab_expression("M", code_m, inputs=("x", "s", "v", "b", "rec"),
                                  outputs=("y", "w")),
                display(), display("Y"), display("W")],
               [("Const.output", "M.x"), ("S.output", "M.s"), ("V.output", "M.v"),
                ("B.output", "M.b"), ("Rec.output", "M.rec"), ("M.output", "Display.input"),
                ("M.y", "Y.input"), ("M.w", "W.input")])
    code, events = run(tmp_path, xml, policy=None)
    assert code == 0, events
    assert texts(events) == [f"6|{TRICKY}|3|6|logical|kay|1"]
    assert texts(events, ".model.Y") == [expression.display(3.5)]
    assert texts(events, ".model.W") == [expression.display(["a", "\u00e9"])]
    assert not (tmp_path / "job" / "pwned").exists()
    assert not list((tmp_path / "job").glob("kree_m_*")), "script files were left behind"


@needs_octave
def test_matlab_expression_error(tmp_path):
    xml = moml([matlab_expression("M", 'error("no luck here")'), display()],
               [("M.output", "Display.input")])
    code, events = run(tmp_path, xml, policy=None)
    assert code == 1
    assert error(events).startswith(".model.M: the Octave code failed (exit code 1)")
    assert "no luck here" in error(events)


def test_matlab_expression_needs_matlab_or_octave(tmp_path):
    xml = moml([matlab_expression("M", "disp(1)"), display()], [("M.output", "Display.input")])
    context = EngineContext(tmp_path, None, software={"Matlab": None, "Octave": None})
    checked = check(xml.encode(), context=context)
    # Missing software is a validation problem, before anything runs.
    assert checked.problems == [".model.M: needs Matlab or Octave, which is not installed here"]
    assert external.MatlabExpression.software_any == ("Matlab", "Octave")


def test_literal_serializers():
    assert external.r_literal(["a", 'b"\\']) == 'c("a", "b\\"\\\\")'
    assert external.r_literal({"a b": [1, True]}) == 'list("a b" = list(1, TRUE))'
    assert external.r_literal(float("-inf")) == "-Inf"
    assert external.r_string("\u00e9\n") == '"\\U{e9}\\U{a}"'
    assert external.octave_literal([1, 2.5]) == "[1, 2.5]"
    assert external.octave_literal(["a", 1]) == '{"a", 1}'
    assert external.octave_literal({"k": ["a"]}) == "struct('k', {{\"a\"}})"
    assert external.octave_string('\u00e9"\\') == '"\\303\\251\\"\\\\"'
    assert external.matlab_string("it's\n\u00e9") == "['it''s', char([10 233])]"
    with pytest.raises(ValueError):
        external.r_literal("nul\0")
    with pytest.raises(ValueError):
        external.octave_name("end")


# -- UserInput ----------------------------------------------------------------------------------


def user_input(name="Ask", fields=None, prompt="How many?", extra=()):
    properties = [prop("prompt", prompt, string=True)]
    if fields is not None:
        properties.append(prop("fields", fields))
    return entity(name, "kree.actor.UserInput", *properties, *extra)


TWO_FIELDS = ('{{name="n", type="int", label="Count"}, {name="mode", type="choice", '
              'choices={"fast", "slow"}, default="slow"}}')


def start_engine(job: Path, stdin) -> subprocess.Popen:
    """The engine as the daemon starts it, with file descriptor 3 for events (here /dev/null)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    events_fd = os.open(os.devnull, os.O_WRONLY)  # not inheritable: only the dup2 copy is
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "kree.engine", "run", str(job)], stdin=stdin,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO, env=env,
            close_fds=False, preexec_fn=lambda: os.dup2(events_fd, 3))
    finally:
        os.close(events_fd)


def wait_for(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out waiting")


def waiting_event(job: Path):
    return wait_for(lambda: next((e for e in read_events(job) if e["type"] == "waiting"), None))


def test_user_input_answer_on_stdin(tmp_path):
    xml = moml([user_input(fields=TWO_FIELDS), display()], [("Ask.output", "Display.input")])
    job = make_job(tmp_path / "job", xml)
    engine = start_engine(job, subprocess.PIPE)
    try:
        event = waiting_event(job)
        assert event["actor"] == ".model.Ask" and event["n"] == 1
        assert event["prompt"] == {"title": "How many?", "fields": [
            {"name": "n", "type": "int", "label": "Count", "default": None},
            {"name": "mode", "type": "choice", "label": "mode", "default": "slow",
             "choices": ["fast", "slow"]}]}
        engine.stdin.write(b'{"answers": {"n": 4}}\n')
        engine.stdin.flush()
        assert engine.wait(20) == 0, engine.stderr.read()
    finally:
        engine.kill()
        engine.wait()
    events = read_events(job)
    assert texts(events) == [expression.display({"n": 4, "mode": "slow"})]
    assert events[-1]["state"] == "finished"


def test_user_input_answer_as_file_with_stdin_closed(tmp_path):
    xml = moml([user_input(), display()], [("Ask.output", "Display.input")])
    job = make_job(tmp_path / "job", xml)
    engine = start_engine(job, subprocess.DEVNULL)
    try:
        event = waiting_event(job)
        assert event["prompt"]["fields"] == [
            {"name": "value", "type": "string", "label": "Value", "default": None}]
        (job / "answers").mkdir()
        tmp = job / "answers" / ".1.json.tmp"
        tmp.write_text(json.dumps({"value": "hello there"}))
        os.replace(tmp, job / "answers" / "1.json")
        assert engine.wait(20) == 0, engine.stderr.read()
    finally:
        engine.kill()
        engine.wait()
    assert texts(read_events(job)) == ["hello there"]


def test_user_input_wrong_answer_type_fails(tmp_path):
    xml = moml([user_input(fields=TWO_FIELDS), display()], [("Ask.output", "Display.input")])
    job = make_job(tmp_path / "job", xml)
    engine = start_engine(job, subprocess.PIPE)
    try:
        waiting_event(job)
        engine.stdin.write(b'{"answers": {"n": "four"}}\n')
        engine.stdin.flush()
        assert engine.wait(20) == 1
    finally:
        engine.kill()
        engine.wait()
    events = read_events(job)
    assert error(events) == ".model.Ask: the answer for field n must be an integer, not 'four'"
    assert events[-1]["state"] == "failed"


def test_user_input_sigterm_while_waiting(tmp_path):
    xml = moml([user_input(), display()], [("Ask.output", "Display.input")])
    job = make_job(tmp_path / "job", xml)
    engine = start_engine(job, subprocess.PIPE)
    try:
        waiting_event(job)
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(20) == 3
    finally:
        engine.kill()
        engine.wait()
    end = read_events(job)[-1]
    assert end["type"] == "end" and end["state"] == "stopped" and end["exit_code"] == 3


def answered_run(tmp_path, xml, answers, iterations=None):
    job = make_job(tmp_path / "job", xml)
    (job / "answers").mkdir()
    for n, answer in enumerate(answers, 1):
        (job / "answers" / f"{n}.json").write_text(json.dumps(answer))
    code = run_job(job, use_fd3=False, install_signals=False, stdin_fd=None)
    return code, read_events(job)


def test_user_input_one_prompt_per_trigger_token(tmp_path):
    xml = moml([entity("Ramp", "ptolemy.actor.lib.Ramp"),
                user_input(fields='{{name="x", type="double"}}'), display()],
               [("Ramp.output", "Ask.trigger"), ("Ask.output", "Display.input")], iterations=3)
    code, events = answered_run(tmp_path, xml, [{"x": 1}, {"x": 2.5}, {"answers": {"x": -1}}])
    assert code == 0, events
    assert [e["n"] for e in events if e["type"] == "waiting"] == [1, 2, 3]
    assert texts(events) == ["1.0", "2.5", "-1.0"]


def test_user_input_fires_once_without_trigger(tmp_path):
    xml = moml([user_input(fields='{{name="ok", type="boolean", default=false}}'), display()],
               [("Ask.output", "Display.input")], iterations=0)
    code, events = answered_run(tmp_path, xml, [{}])
    assert code == 0, events
    assert texts(events) == ["false"]  # the default
    assert sum(e["type"] == "waiting" for e in events) == 1


@pytest.mark.parametrize("answer, message", [
    ({"n": 1, "extra": 2}, "the answer has unknown fields extra (expected mode, n)"),
    ({"mode": "fast"}, "the answer gives no value for field n"),
    ({"n": True}, "the answer for field n must be an integer, not True"),
    ({"n": 1, "mode": "medium"}, "the answer for field mode must be one of 'fast', 'slow', "
                                 "not 'medium'"),
])
def test_user_input_bad_answers(tmp_path, answer, message):
    xml = moml([user_input(fields=TWO_FIELDS), display()], [("Ask.output", "Display.input")])
    code, events = answered_run(tmp_path, xml, [answer])
    assert code == 1
    assert error(events) == f".model.Ask: {message}"


@pytest.mark.parametrize("fields, message", [
    ('{{name="1x", type="string"}}', "name must be a string matching"),
    ('{{name="x", type="float"}}', "type must be one of string, int, double, boolean, choice"),
    ('{{name="x", type="choice"}}', "a choice needs choices"),
    ('{{name="x", type="int", default="no"}}', "the default 'no' is not an integer"),
    ('{{name="x"}, {name="x"}}', "field x is declared twice"),
])
def test_user_input_bad_fields(tmp_path, fields, message):
    xml = moml([user_input(fields=fields), display()], [("Ask.output", "Display.input")])
    code, events = answered_run(tmp_path, xml, [])
    assert code == 1
    assert message in error(events)
