"""
The dataflow actors (transforms, routing, flow, control), each run in a
small workflow through run_job, checked with Test actors and Display
messages, under SDF and, where it matters, PN.
"""

import inspect
import json
import threading
import time
from xml.sax.saxutils import quoteattr

import pytest

from kree.engine import directors, runner
from kree.engine.actors import control, flow, routing, transforms
from kree.engine.model import StopRequested
from kree.engine.protocol import EngineContext
from kree.engine.registry import Registry

TEST = "ptolemy.actor.lib.Test"
DISPLAY = "ptolemy.actor.lib.gui.Display"
RAMP = "ptolemy.actor.lib.Ramp"
CONST = "ptolemy.actor.lib.Const"
SEQUENCE = "ptolemy.actor.lib.Sequence"
STRING_CONST = "ptolemy.actor.lib.StringConst"
EXPRESSION = "ptolemy.actor.lib.Expression"
ADD = "ptolemy.actor.lib.AddSubtract"
MULTIPLY = "ptolemy.actor.lib.MultiplyDivide"
SAMPLE_DELAY = "ptolemy.domains.sdf.lib.SampleDelay"


# -- building and running workflows ----------------------------------------------------


def entity(name: str, cls: str, *, inputs: tuple[str, ...] = (), **params) -> str:
    """An entity; C{inputs} are user-declared input ports (an Expression's)."""
    ports = "".join(f'<port name="{p}" class="ptolemy.actor.TypedIOPort">'
                    '<property name="input"/></port>' for p in inputs)
    props = "".join(f'<property name="{k}" value={quoteattr(str(v))}/>'
                    for k, v in params.items())
    return f'<entity name="{name}" class="{cls}">{props}{ports}</entity>'


class Wiring:
    """Relations and links: each connect() is one relation from a source to its destinations."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def connect(self, source: str, *destinations: str) -> "Wiring":
        relation = f"r{len(self.parts)}"
        links = "".join(f'<link port="{p}" relation="{relation}"/>'
                        for p in (source, *destinations))
        self.parts.append(f'<relation name="{relation}" class="ptolemy.actor.TypedIORelation"/>'
                          f"{links}")
        return self

    def __str__(self) -> str:
        return "".join(self.parts)


def links(*pairs) -> str:
    wiring = Wiring()
    for source, *destinations in pairs:
        wiring.connect(source, *destinations)
    return str(wiring)


def moml(body: str, director: str = "SDF", iterations: int = 1, extra: str = "") -> bytes:
    if director == "SDF":
        d = ('<property name="director" class="ptolemy.domains.sdf.kernel.SDFDirector">'
             f'<property name="iterations" value="{iterations}"/></property>')
    else:
        d = '<property name="director" class="ptolemy.domains.pn.kernel.PNDirector"/>'
    return ('<?xml version="1.0"?>\n'
            '<entity name="model" class="ptolemy.actor.TypedCompositeActor">'
            f"{d}{extra}{body}</entity>").encode()


@pytest.fixture
def run(tmp_path, monkeypatch):
    """run(body, director="SDF", iterations=1) -> (exit code, events)."""
    monkeypatch.chdir(tmp_path)  # run_job changes directory; undone after the test
    counter = iter(range(1000))

    def run(body: str, director: str = "SDF", iterations: int = 1, extra: str = ""):
        job = tmp_path / f"job{next(counter)}"
        job.mkdir()
        (job / "workflow.xml").write_bytes(moml(body, director, iterations, extra))
        code = runner.run_job(job, use_fd3=False, install_signals=False)
        events = [json.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]
        assert events[-1]["type"] == "end" and events[-1]["exit_code"] == code
        return code, events

    return run


def messages(events, actor: str | None = None) -> list[str]:
    return [e["text"] for e in events
            if e["type"] == "message" and (actor is None or e["actor"] == actor)]


def error(events) -> dict:
    errors = [e for e in events if e["type"] == "error"]
    assert errors, events
    return errors[0]


def ok(result):
    code, events = result
    assert code == 0, [e for e in events if e["type"] == "error"]
    return events


def failed(result) -> dict:
    code, events = result
    assert code == 1, events
    return error(events)


def problems(body: str, director: str = "SDF") -> list[str]:
    return runner.check(moml(body, director)).problems


# -- documentation ---------------------------------------------------------------------


def test_every_actor_documents_ports_and_parameters():
    for module in (transforms, routing, flow, control):
        classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
                   if c.__module__ == module.__name__ and getattr(c, "class_name", "")]
        assert classes
        for cls in classes:
            doc = inspect.getdoc(cls)
            assert doc and "\n\n" in doc, cls
            assert "Ports:" in doc, cls
            for spec in cls.ports:
                assert spec.name in doc, (cls, spec.name)
            for spec in cls.parameters:
                assert spec.name in doc, (cls, spec.name)
    described = {e["class"] for e in Registry.default().describe()}
    assert {"ptolemy.actor.lib.Expression", "ptolemy.actor.lib.string.StringReplace",
            "kree.actor.StringJoin", "ptolemy.actor.lib.BooleanSelect", "ptolemy.actor.lib.Sleep",
            "ptolemy.domains.sdf.lib.Repeat", "ptolemy.actor.lib.Stop",
            "kree.actor.Fail"} <= described


# -- Expression ------------------------------------------------------------------------


def test_expression_inputs_parameters_and_iteration(run):
    body = (entity("Ramp", RAMP)
            + entity("C", CONST, value="100")
            + entity("Expr", EXPRESSION, inputs=("A", "B"),
                     expression="A * 2 + B + iteration + offset")
            + entity("Test", TEST, correctValues="{111, 114, 117}")
            + entity("Display", DISPLAY)
            + links(("Ramp.output", "Expr.A"), ("C.output", "Expr.B"),
                    ("Expr.output", "Test.input", "Display.input")))
    events = ok(run(body, iterations=3,
                    extra='<property name="offset" class="ptolemy.data.expr.Parameter" '
                          'value="10"/>'))
    assert messages(events, ".model.Display") == ["111", "114", "117"]


def test_expression_strings_and_records_under_pn(run):
    body = (entity("Names", SEQUENCE, values='{"ann", "bob"}')
            + entity("Expr", EXPRESSION, inputs=("name",),
                     expression='{who = name + "!", n = name.length()}')
            + entity("Display", DISPLAY)
            + links(("Names.output", "Expr.name"), ("Expr.output", "Display.input")))
    events = ok(run(body, director="PN"))
    assert messages(events) == ['{n=3, who="ann!"}', '{n=3, who="bob!"}']


def test_expression_syntax_error_names_the_actor(run):
    body = (entity("Ramp", RAMP)
            + entity("Expr", EXPRESSION, inputs=("A",), expression="A + * 2")
            + entity("Display", DISPLAY)
            + links(("Ramp.output", "Expr.A"), ("Expr.output", "Display.input")))
    code, events = run(body)
    err = failed((code, events))
    assert err["actor"] == ".model.Expr"
    assert "A + * 2" in err["message"]
    assert messages(events) == []


@pytest.mark.parametrize("text", ['__import__("os")', 'A.__class__', 'eval("1")',
                                  'nosuchname + 1'])
def test_expression_cannot_reach_python(run, text):
    body = (entity("Ramp", RAMP)
            + entity("Expr", EXPRESSION, inputs=("A",), expression=text)
            + entity("Display", DISPLAY)
            + links(("Ramp.output", "Expr.A"), ("Expr.output", "Display.input")))
    code, events = run(body)
    assert code == 1
    err = error(events)
    assert err["actor"] == ".model.Expr" and "internal engine error" not in err["message"]
    assert messages(events) == []


def test_expression_empty_and_evaluation_errors(run):
    body = (entity("Expr", EXPRESSION, expression="  ")
            + entity("Display", DISPLAY) + links(("Expr.output", "Display.input")))
    assert "empty" in failed(run(body))["message"]
    body = (entity("Ramp", RAMP)
            + entity("Expr", EXPRESSION, inputs=("A",), expression="10 / (A - 1)")
            + entity("Display", DISPLAY)
            + links(("Ramp.output", "Expr.A"), ("Expr.output", "Display.input")))
    code, events = run(body, iterations=3)
    assert code == 1 and messages(events) == ["-10"]
    assert "division by zero" in error(events)["message"]


# -- arithmetic ------------------------------------------------------------------------


def test_add_subtract_channels(run):
    body = (entity("Ramp", RAMP, step="10")
            + entity("One", CONST, value="1")
            + entity("Half", CONST, value="0.5")
            + entity("Add", ADD)
            + entity("Test", TEST, correctValues="{0.5, 10.5, 20.5}")
            + links(("Ramp.output", "Add.plus"), ("One.output", "Add.plus"),
                    ("Half.output", "Add.minus"), ("Add.output", "Test.input")))
    ok(run(body, iterations=3))


def test_add_subtract_strings_arrays_and_minus_only(run):
    body = (entity("S", STRING_CONST, value="n=")
            + entity("Ramp", RAMP)
            + entity("Add", ADD)
            + entity("Test", TEST, correctValues='{"n=0", "n=1"}')
            + entity("A", CONST, value="{1, 2}")
            + entity("B", CONST, value="{10, 20}")
            + entity("Add2", ADD)
            + entity("Test2", TEST, correctValues="{{-9, -18}, {-9, -18}}")
            + entity("Neg", ADD)
            + entity("Test3", TEST, correctValues="{0, -1}")
            + links(("S.output", "Add.plus"), ("Ramp.output", "Add.plus", "Neg.minus"),
                    ("Add.output", "Test.input"),
                    ("A.output", "Add2.plus"), ("B.output", "Add2.minus"),
                    ("Add2.output", "Test2.input"), ("Neg.output", "Test3.input")))
    ok(run(body, iterations=2))


def test_add_subtract_type_error_fails_cleanly(run):
    body = (entity("T", CONST, value="true") + entity("One", CONST, value="1")
            + entity("Add", ADD) + entity("Display", DISPLAY)
            + links(("T.output", "Add.plus"), ("One.output", "Add.plus"),
                    ("Add.output", "Display.input")))
    err = failed(run(body))
    assert err["actor"] == ".model.Add" and "cannot compute true + 1" in err["message"]


def test_multiply_divide_integer_semantics(run):
    body = (entity("Seven", CONST, value="7") + entity("Minus", CONST, value="-7")
            + entity("Two", CONST, value="2") + entity("Three", CONST, value="3")
            + entity("D1", MULTIPLY) + entity("D2", MULTIPLY) + entity("D3", MULTIPLY)
            + entity("T1", TEST, correctValues="{1}")  # 7 * 3 / (2 * 3 * 3) = 21 / 18
            + entity("T2", TEST, correctValues="{-3}")
            + entity("T3", TEST, correctValues="{0}")  # 1 / 2 in integers
            + links(("Seven.output", "D1.multiply"), ("Three.output", "D1.multiply",
                                                      "D1.divide", "D1.divide"),
                    ("Two.output", "D1.divide", "D2.divide", "D3.divide"),
                    ("Minus.output", "D2.multiply"),
                    ("D1.output", "T1.input"), ("D2.output", "T2.input"),
                    ("D3.output", "T3.input")))
    ok(run(body))


def test_multiply_divide_doubles_and_division_by_zero(run):
    body = (entity("A", CONST, value="7.0") + entity("B", CONST, value="2")
            + entity("D", MULTIPLY) + entity("T", TEST, correctValues="{3.5}")
            + links(("A.output", "D.multiply"), ("B.output", "D.divide"), ("D.output", "T.input")))
    ok(run(body))
    body = (entity("A", CONST, value="7") + entity("Z", CONST, value="0")
            + entity("D", MULTIPLY) + entity("Display", DISPLAY)
            + links(("A.output", "D.multiply"), ("Z.output", "D.divide"),
                    ("D.output", "Display.input")))
    err = failed(run(body))
    assert err["actor"] == ".model.D" and "division by zero" in err["message"]


def test_scale_numbers_and_arrays(run):
    body = (entity("Ramp", RAMP) + entity("Arr", CONST, value="{1, 2.5}")
            + entity("S1", "ptolemy.actor.lib.Scale", factor="3")
            + entity("S2", "ptolemy.actor.lib.Scale", factor="2", scaleOnLeft="false")
            + entity("T1", TEST, correctValues="{0, 3}")
            + entity("T2", TEST, correctValues="{{2, 5.0}, {2, 5.0}}")
            + links(("Ramp.output", "S1.input"), ("S1.output", "T1.input"),
                    ("Arr.output", "S2.input"), ("S2.output", "T2.input")))
    ok(run(body, iterations=2))
    body = (entity("Ramp", RAMP) + entity("S", "ptolemy.actor.lib.Scale", factor="true")
            + entity("Display", DISPLAY)
            + links(("Ramp.output", "S.input"), ("S.output", "Display.input")))
    assert failed(run(body))["actor"] == ".model.S"


def test_accumulator_with_reset(run):
    body = (entity("Ramp", RAMP, init="1")
            + entity("Reset", SEQUENCE, values="{false, true, false, false}")
            + entity("Acc", "ptolemy.actor.lib.Accumulator")
            + entity("Plain", "ptolemy.actor.lib.Accumulator", init="0.5")
            + entity("T1", TEST, correctValues="{1, 2, 5, 9}")
            + entity("T2", TEST, correctValues="{1.5, 3.5, 6.5, 10.5}")
            + links(("Ramp.output", "Acc.input", "Plain.input"), ("Reset.output", "Acc.reset"),
                    ("Acc.output", "T1.input"), ("Plain.output", "T2.input")))
    ok(run(body, iterations=4))


def test_accumulator_bounds_and_bad_reset(run):
    body = (entity("Ramp", RAMP, init="1")
            + entity("Acc", "ptolemy.actor.lib.Accumulator", upperBound="4")
            + entity("T", TEST, correctValues="{1, 3, 4}")
            + links(("Ramp.output", "Acc.input"), ("Acc.output", "T.input")))
    ok(run(body, iterations=3))
    body = (entity("Ramp", RAMP) + entity("R", CONST, value="1")
            + entity("Acc", "ptolemy.actor.lib.Accumulator") + entity("Display", DISPLAY)
            + links(("Ramp.output", "Acc.input"), ("R.output", "Acc.reset"),
                    ("Acc.output", "Display.input")))
    assert "reset expects booleans" in failed(run(body))["message"]


# -- strings ---------------------------------------------------------------------------

REPLACE = "ptolemy.actor.lib.string.StringReplace"


def test_string_replace_port_and_parameters(run):
    body = (entity("Text", STRING_CONST, value="hello world")
            + entity("All", REPLACE, pattern="o", replacement="0")
            + entity("First", REPLACE, pattern="o", replacement="0", replaceAll="false")
            + entity("Groups", REPLACE, pattern=r"(\w+) (?<second>\w+)",
                     # String mode substitutes $name and turns $$ into $, so
                     # Java's \$ (a literal dollar) before group $0 is written \$$$0.
                     replacement=r"${second} $1 \$$$0")
            + entity("Plain", REPLACE, stringToEdit="a.b.c", pattern=".", replacement="$",
                     regularExpression="false")
            + entity("Display", DISPLAY)
            + links(("Text.output", "All.stringToEdit", "First.stringToEdit",
                     "Groups.stringToEdit"),
                    ("All.output", "Display.input"), ("First.output", "Display.input"),
                    ("Groups.output", "Display.input"), ("Plain.output", "Display.input")))
    events = ok(run(body))
    assert messages(events) == ["hell0 w0rld", "hell0 world", "world hello $hello world",
                                "a$b$c"]


def test_string_replace_pattern_from_a_port(run):
    body = (entity("Text", SEQUENCE, values='{"aXbY", "XYXY"}')
            + entity("Pattern", SEQUENCE, values='{"X", "Y"}')
            + entity("R", REPLACE, pattern="never used", replacement="-")
            + entity("T", TEST, correctValues='{"a-bY", "X-X-"}')
            + links(("Text.output", "R.stringToEdit"), ("Pattern.output", "R.pattern"),
                    ("R.output", "T.input")))
    ok(run(body, iterations=2))
    ok(run(body, director="PN"))


@pytest.mark.parametrize("pattern, replacement, wanted", [
    ("(", "x", "failed to compile regular expression"),
    ("o", "$5", "no group 5"),
    ("o", "$x", "illegal group reference"),
    ("o", "a\\", "escaped"),
])
def test_string_replace_errors(run, pattern, replacement, wanted):
    body = (entity("R", REPLACE, stringToEdit="foo", pattern=pattern, replacement=replacement)
            + entity("Display", DISPLAY) + links(("R.output", "Display.input")))
    err = failed(run(body))
    assert err["actor"] == ".model.R" and wanted in err["message"]


def test_string_split_and_join(run):
    body = (entity("Lines", STRING_CONST, value=" a \n b\n\n")
            + entity("Csv", STRING_CONST, value="1,2,,3,,")
            + entity("Split", "ptolemy.actor.lib.string.StringSplit")
            + entity("SplitCsv", "ptolemy.actor.lib.string.StringSplit", separator=",",
                     trimSpaces="false")
            + entity("Join", "kree.actor.StringJoin", separator=" + ")
            + entity("Arr", CONST, value='{"x", 1, {2}}')
            + entity("Join2", "kree.actor.StringJoin")
            + entity("T1", TEST, correctValues='{{"a", "b"}}')
            + entity("T2", TEST, correctValues='{"1 + 2 +  + 3"}')
            + entity("T3", TEST, correctValues='{"x,1,{2}"}')
            + links(("Lines.output", "Split.input"), ("Split.output", "T1.input"),
                    ("Csv.output", "SplitCsv.input"), ("SplitCsv.output", "Join.input"),
                    ("Join.output", "T2.input"), ("Arr.output", "Join2.input"),
                    ("Join2.output", "T3.input")))
    ok(run(body))


def test_string_split_regex_separator_and_type_errors(run):
    body = (entity("S", STRING_CONST, value="a1b22c")
            + entity("Split", "ptolemy.actor.lib.string.StringSplit", separator="[0-9]+")
            + entity("T", TEST, correctValues='{{"a", "b", "c"}}')
            + links(("S.output", "Split.input"), ("Split.output", "T.input")))
    ok(run(body))
    body = (entity("N", CONST, value="3") + entity("Join", "kree.actor.StringJoin")
            + entity("Display", DISPLAY)
            + links(("N.output", "Join.input"), ("Join.output", "Display.input")))
    assert "must be an array" in failed(run(body))["message"]


# -- routing (PN) ----------------------------------------------------------------------

SWITCH = "ptolemy.actor.lib.BooleanSwitch"
SELECT = "ptolemy.actor.lib.BooleanSelect"


def test_boolean_switch_under_pn(run):
    body = (entity("Switch", SWITCH)
            + entity("Data", SEQUENCE, values="{1, 2, 3, 4, 5}")
            + entity("Control", SEQUENCE, values="{true, false, false, true, true}")
            + entity("True", TEST, correctValues="{1, 4, 5}")
            + entity("False", TEST, correctValues="{2, 3}")
            + links(("Data.output", "Switch.input"), ("Control.output", "Switch.control"),
                    ("Switch.trueOutput", "True.input"), ("Switch.falseOutput", "False.input")))
    ok(run(body, director="PN"))


def test_boolean_switch_control_persists_and_defaults_to_false(run):
    body = (entity("Switch", SWITCH)
            + entity("Data", SEQUENCE, values="{1, 2, 3}")
            + entity("Control", CONST, value="true", firingCountLimit="1")
            + entity("True", TEST, correctValues="{1, 2, 3}")
            + entity("Switch2", SWITCH)
            + entity("False", TEST, correctValues="{1, 2, 3}")
            + links(("Data.output", "Switch.input", "Switch2.input"),
                    ("Control.output", "Switch.control"),
                    ("Switch.trueOutput", "True.input"), ("Switch2.falseOutput", "False.input")))
    ok(run(body, director="PN"))


def test_boolean_switch_rejects_non_boolean_control(run):
    body = (entity("Data", CONST, value="1", firingCountLimit="1")
            + entity("Control", CONST, value="1", firingCountLimit="1")
            + entity("Switch", SWITCH) + entity("Display", DISPLAY)
            + links(("Data.output", "Switch.input"), ("Control.output", "Switch.control"),
                    ("Switch.trueOutput", "Display.input")))
    assert "control expects booleans" in failed(run(body, director="PN"))["message"]


def test_boolean_select_under_pn(run):
    body = (entity("Select", SELECT)
            + entity("Control", SEQUENCE, values="{true, false, false, true}")
            + entity("T", SEQUENCE, values="{1, 2, 3}")  # 3 is never selected
            + entity("F", SEQUENCE, values="{10, 20}")
            + entity("Test", TEST, correctValues="{1, 10, 20, 2}")
            + links(("Control.output", "Select.control"), ("T.output", "Select.trueInput"),
                    ("F.output", "Select.falseInput"), ("Select.output", "Test.input")))
    ok(run(body, director="PN"))


def test_boolean_select_merges_a_switched_stream(run):
    # Switch by parity, double the even values, merge back in the original order.
    body = (entity("Ramp", RAMP, firingCountLimit="4")
            + entity("Even", EXPRESSION, inputs=("x",), expression="x % 2 == 0")
            + entity("Switch", SWITCH)
            + entity("Double", "ptolemy.actor.lib.Scale", factor="100")
            + entity("Select", SELECT)
            + entity("Test", TEST, correctValues="{0, 1, 200, 3}")
            + links(("Ramp.output", "Even.x", "Switch.input"),
                    ("Even.output", "Switch.control", "Select.control"),
                    ("Switch.trueOutput", "Double.input"), ("Double.output", "Select.trueInput"),
                    ("Switch.falseOutput", "Select.falseInput"), ("Select.output", "Test.input")))
    ok(run(body, director="PN"))


# -- flow ------------------------------------------------------------------------------

SLEEP = "ptolemy.actor.lib.Sleep"
REPEAT = "ptolemy.domains.sdf.lib.Repeat"


def test_sleep_passes_tokens_through_each_channel(run):
    body = (entity("A", RAMP) + entity("B", RAMP, init="10")
            + entity("Sleep", SLEEP, sleepTime="20L")
            + entity("TA", TEST, correctValues="{0, 1}")
            + entity("TB", TEST, correctValues="{10, 11}")
            + links(("A.output", "Sleep.input"), ("B.output", "Sleep.input"),
                    ("Sleep.output", "TA.input"), ("Sleep.output", "TB.input")))
    started = time.monotonic()
    ok(run(body, iterations=2))
    assert time.monotonic() - started >= 0.04


def _long_sleep() -> bytes:
    body = (entity("Ramp", RAMP) + entity("Sleep", SLEEP, sleepTime="60000")
            + entity("Display", DISPLAY)
            + links(("Ramp.output", "Sleep.input"), ("Sleep.output", "Display.input")))
    return moml(body, iterations=0)


def test_sleep_is_interrupted_by_a_stop(tmp_path):
    context = EngineContext(tmp_path, None)
    checked = runner.check(_long_sleep(), context=context)
    assert checked.problems == []
    director = directors.SDFDirector(checked.model, context)
    timer = threading.Timer(0.2, context.request_stop)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(StopRequested):
            director.run()
    finally:
        timer.cancel()
    assert time.monotonic() - started < 5


def test_stopped_sleep_ends_the_job_with_exit_code_3(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    contexts = []

    class Recording(EngineContext):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            contexts.append(self)

    monkeypatch.setattr(runner, "EngineContext", Recording)
    job = tmp_path / "job"
    job.mkdir()
    (job / "workflow.xml").write_bytes(_long_sleep())
    timer = threading.Timer(0.2, lambda: contexts[0].request_stop())
    timer.start()
    started = time.monotonic()
    try:
        code = runner.run_job(job, use_fd3=False, install_signals=False)
    finally:
        timer.cancel()
    assert code == 3 and time.monotonic() - started < 5
    end = json.loads((job / "events.jsonl").read_text().splitlines()[-1])
    assert end["state"] == "stopped"


def test_sleep_time_must_be_a_non_negative_number(run):
    body = (entity("Ramp", RAMP) + entity("Sleep", SLEEP, sleepTime="-1")
            + entity("Display", DISPLAY)
            + links(("Ramp.output", "Sleep.input"), ("Sleep.output", "Display.input")))
    assert "sleepTime" in failed(run(body))["message"]


def test_repeat_rates_under_sdf(run):
    body = (entity("Ramp", RAMP)
            + entity("Rep", REPEAT, numberOfTimes="3")
            + entity("Test", TEST, correctValues="{0, 0, 0, 1, 1, 1}")
            + links(("Ramp.output", "Rep.input"), ("Rep.output", "Test.input")))
    ok(run(body, iterations=2))
    body = (entity("Ramp", RAMP)
            + entity("Rep", REPEAT, numberOfTimes="2", blockSize="2")
            + entity("Test", TEST, correctValues="{0, 1, 0, 1, 2, 3, 2, 3}")
            + entity("Display", DISPLAY)
            + links(("Ramp.output", "Rep.input"), ("Rep.output", "Test.input", "Display.input")))
    checked = runner.check(moml(body))
    schedule = [a.name for a in directors.sdf_schedule(checked.model.actors)]
    assert schedule.count("Ramp") == 2 and schedule.count("Rep") == 1
    assert schedule.count("Test") == 4 and schedule.count("Display") == 4
    ok(run(body, iterations=2))


def test_repeat_under_pn_and_bad_parameters(run):
    body = (entity("Data", SEQUENCE, values='{"a", "b", "c", "d"}')
            + entity("Rep", REPEAT, blockSize="2")
            + entity("Test", TEST, correctValues='{"a", "b", "a", "b", "c", "d", "c", "d"}')
            + links(("Data.output", "Rep.input"), ("Rep.output", "Test.input")))
    ok(run(body, director="PN"))
    body = (entity("Ramp", RAMP) + entity("Rep", REPEAT, numberOfTimes="0")
            + entity("Display", DISPLAY)
            + links(("Ramp.output", "Rep.input"), ("Rep.output", "Display.input")))
    err = failed(run(body))
    assert err["actor"] == ".model.Rep" and "numberOfTimes" in err["message"]


def _feedback(with_delay: bool) -> str:
    loop = (("Add.output", "Delay.input", "Test.input"), ("Delay.output", "Add.plus")) \
        if with_delay else (("Add.output", "Add2.plus", "Test.input"),
                            ("Add2.output", "Add.plus"))
    body = (entity("One", CONST, value="1")
            + entity("Add", ADD)
            + entity("Test", TEST, correctValues="{1, 2, 3, 4}"))
    body += entity("Delay", SAMPLE_DELAY) if with_delay else entity("Add2", ADD)
    return body + links(("One.output", "Add.plus"), *loop)


def test_sample_delay_makes_a_feedback_loop_run(run):
    assert problems(_feedback(True)) == []
    ok(run(_feedback(True), iterations=4))


def test_feedback_loop_without_sample_delay_is_a_validation_error(run):
    found = problems(_feedback(False))
    assert len(found) == 1 and "SampleDelay" in found[0] and ".model.Add" in found[0]
    code, events = run(_feedback(False), iterations=4)
    assert code == 1 and "SampleDelay" in error(events)["message"]


def test_sample_delay_initial_outputs(run):
    body = (entity("Ramp", RAMP)
            + entity("Delay", SAMPLE_DELAY, initialOutputs="{5, 6}")
            + entity("Test", TEST, correctValues="{5, 6, 0}")
            + links(("Ramp.output", "Delay.input"), ("Delay.output", "Test.input")))
    ok(run(body, iterations=3))
    body = (entity("Ramp", RAMP) + entity("Delay", SAMPLE_DELAY, initialOutputs="7")
            + entity("Display", DISPLAY)
            + links(("Ramp.output", "Delay.input"), ("Delay.output", "Display.input")))
    assert "initialOutputs must be an array" in failed(run(body))["message"]


def test_pn_feedback_loop_with_sample_delay(run):
    body = (entity("Ramp", RAMP, init="1", firingCountLimit="4")
            + entity("Add", ADD)
            + entity("Delay", SAMPLE_DELAY)
            + entity("Test", TEST, correctValues="{1, 3, 6, 10}")
            + links(("Ramp.output", "Add.plus"), ("Add.output", "Delay.input", "Test.input"),
                    ("Delay.output", "Add.plus")))
    ok(run(body, director="PN"))


# -- control ---------------------------------------------------------------------------


def test_stop_ends_an_unbounded_sdf_run(run):
    body = (entity("Ramp", RAMP)
            + entity("Done", EXPRESSION, inputs=("n",), expression="n >= 3")
            + entity("Stop", "ptolemy.actor.lib.Stop")
            + entity("Test", TEST, correctValues="{0, 1, 2, 3}")
            + links(("Ramp.output", "Done.n", "Test.input"), ("Done.output", "Stop.input")))
    events = ok(run(body, iterations=0))
    assert events[-1]["state"] == "finished"


def test_unconnected_stop_ends_after_the_first_iteration(run):
    body = (entity("Ramp", RAMP) + entity("Stop", "ptolemy.actor.lib.Stop")
            + entity("Display", DISPLAY) + links(("Ramp.output", "Display.input")))
    assert messages(ok(run(body, iterations=0))) == ["0"]


def test_stop_under_pn_finishes_the_stop_actor(run):
    body = (entity("Flags", SEQUENCE, values="{false, true, false}")
            + entity("Stop", "ptolemy.actor.lib.Stop")
            + links(("Flags.output", "Stop.input")))
    ok(run(body, director="PN"))


def test_fail_reports_its_message_and_the_token(run):
    body = (entity("Ramp", RAMP)
            + entity("Big", EXPRESSION, inputs=("n",), expression="n > 1")
            + entity("Switch", SWITCH)
            + entity("Fail", "kree.actor.Fail", message="too big")
            + entity("Display", DISPLAY)
            + links(("Ramp.output", "Big.n", "Switch.input"), ("Big.output", "Switch.control"),
                    ("Switch.trueOutput", "Fail.input"), ("Switch.falseOutput", "Display.input")))
    code, events = run(body, director="PN")
    assert code == 1
    err = error(events)
    assert err["actor"] == ".model.Fail" and err["message"] == "too big: 2"
    assert messages(events, ".model.Display") == ["0", "1"]
    assert events[-1]["state"] == "failed" and "too big: 2" in events[-1]["error"]


def test_fail_without_inputs_fails_on_its_first_firing(run):
    err = failed(run(entity("Fail", "kree.actor.Fail")))
    assert err == {**err, "actor": ".model.Fail", "message": "failed on purpose"}
