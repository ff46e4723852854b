"""
The engine's parser, model builder, directors and runner (in process), with
hostile documents.  The engine as a subprocess is tests/test_engine_process.py.
"""

import json
import time
import tracemalloc
from pathlib import Path

import pytest

from kree.engine import directors
from kree.engine.model import ValidationError, build
from kree.engine.moml import MAX_DOCUMENT_BYTES, MomlError, parse_moml
from kree.engine.protocol import EngineContext
from kree.engine.registry import Registry
from kree.engine.runner import check, run_job

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"


def moml(body: str, director: str = "SDF", iterations: int = 1, extra: str = "") -> bytes:
    if director == "SDF":
        d = ('<property name="SDF Director" class="ptolemy.domains.sdf.kernel.SDFDirector">'
             f'<property name="iterations" value="{iterations}"/></property>')
    elif director == "PN":
        d = '<property name="PN Director" class="ptolemy.domains.pn.kernel.PNDirector"/>'
    else:
        d = director
    return (f'<?xml version="1.0"?>\n<entity name="model" class="ptolemy.actor.TypedCompositeActor">'
            f"{d}{extra}{body}</entity>").encode()


def chain(*entities: tuple[str, str, str], links: list[tuple[str, str]]) -> str:
    """Entities (name, class, properties XML) and links (port, relation)."""
    body = "".join(f'<entity name="{n}" class="{c}">{p}</entity>' for n, c, p in entities)
    relations = sorted({r for _, r in links})
    body += "".join(f'<relation name="{r}" class="ptolemy.actor.TypedIORelation"/>'
                    for r in relations)
    body += "".join(f'<link port="{p}" relation="{r}"/>' for p, r in links)
    return body


def prop(name, value):
    return f'<property name="{name}" value="{value}"/>'


RAMP_TO_DISPLAY = chain(
    ("Ramp", "ptolemy.actor.lib.Ramp", prop("step", "2")),
    ("Display", "ptolemy.actor.lib.gui.Display", ""),
    links=[("Ramp.output", "r"), ("Display.input", "r")],
)


def run(tmp_path, data: bytes, parameters=None, policy=None):
    job = tmp_path / "job"
    job.mkdir(exist_ok=True)
    (job / "workflow.xml").write_bytes(data)
    if parameters is not None:
        (job / "parameters.json").write_text(json.dumps(parameters))
    if policy is not None:
        (job / "policy.json").write_text(json.dumps(policy))
    code = run_job(job, use_fd3=False, install_signals=False)
    events = [json.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]
    return code, events


def messages(events):
    return [e["text"] for e in events if e["type"] == "message"]


# -- parsing -------------------------------------------------------------------


def test_vergil_documents_parse_with_layout_ignored():
    top = parse_moml((WORKFLOWS / "hello.xml").read_bytes())
    assert top.name == "hello" and top.full_name == ".hello"
    assert top.director.class_name == "ptolemy.domains.sdf.kernel.SDFDirector"
    assert set(top.director.properties) == {"iterations"}  # _location dropped
    assert set(top.properties) == set()  # _createdBy, _windowProperties, Annotation dropped
    assert list(top.entities) == ["Greeting", "Display"]
    assert top.entities["Greeting"].properties["value"].value == "Hello, world"


def test_director_element_and_groups_are_read():
    top = parse_moml(b'<entity name="m" class="ptolemy.actor.TypedCompositeActor">'
                     b'<director name="d" class="ptolemy.domains.pn.kernel.PNDirector"/>'
                     b'<group><entity name="A" class="ptolemy.actor.lib.Const"/></group></entity>')
    assert top.director.name == "d" and list(top.entities) == ["A"]


@pytest.mark.parametrize("element, words", [
    ('<class name="C" extends="ptolemy.actor.TypedCompositeActor"/>', "<class> definitions"),
    ('<import source="other.xml"/>', "<import>"),
    ('<input source="other.xml"/>', "<input>"),
    ('<entity name="A" class="ptolemy.actor.lib.Const"><configure source="x"/></entity>', "<configure>"),
    ('<deleteEntity name="A"/>', "<deleteEntity>"),
    ('<unlink port="A.output" relation="r"/>', "<unlink>"),
    ('<frobnicate/>', "unknown element <frobnicate>"),
    ('<entity name="a.b" class="ptolemy.actor.lib.Const"/>', "contains a period"),
    ('<link port="A.output"/>', "<link> needs port and relation"),
])
def test_refused_constructs(element, words):
    with pytest.raises(MomlError) as info:
        parse_moml(moml(element))
    assert any(words in p for p in info.value.problems), info.value.problems


def test_hostile_documents_fail_fast_and_small():
    bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            + b"".join(f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">'.encode()
                       for i in range(1, 10))
            + b']><entity name="m">&lol9;</entity>')
    external = (b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                b'<entity name="m">&x;</entity>')
    huge = b'<entity name="m">' + b" " * (50 * 1024 * 1024) + b"</entity>"
    deep = b'<entity name="m">' + b"<group>" * 10000 + b"</group>" * 10000 + b"</entity>"
    tracemalloc.start()
    started = time.monotonic()
    for document, words in ((bomb, "refused XML construct"), (external, "refused XML construct"),
                            (huge, "exceeds the limit"), (deep, "levels deep")):
        with pytest.raises(MomlError) as info:
            parse_moml(document)
        assert words in str(info.value)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.monotonic() - started < 5
    assert peak < 100 * 1024 * 1024
    assert len(huge) > MAX_DOCUMENT_BYTES


def test_not_xml_and_not_moml():
    with pytest.raises(MomlError, match="not well-formed"):
        parse_moml(b"<entity><oops></entity>")
    with pytest.raises(MomlError, match="not <entity>"):
        parse_moml(b"<html/>")


# -- building --------------------------------------------------------------------


def test_unknown_classes_directors_and_dangling_links_are_listed():
    data = moml(chain(
        ("Mystery", "org.example.Mystery", ""),
        ("Display", "ptolemy.actor.lib.gui.Display", ""),
        links=[("Mystery.output", "r"), ("Display.input", "r"), ("Ghost.output", "r"),
               ("Display.nosuchport", "r")],
    ) + '<link port="Display.input" relation="nowhere"/>',
        director='<property name="D" class="org.example.TimeWarpDirector"/>')
    checked = check(data)
    problems = "\n".join(checked.problems)
    assert "unknown actor class 'org.example.Mystery'" in problems and ".model.Mystery" in problems
    assert "unknown director class 'org.example.TimeWarpDirector'" in problems
    assert "no entity 'Ghost'" in problems
    assert "has no port 'nosuchport'" in problems
    assert "unknown relation 'nowhere'" in problems


def test_missing_director_and_two_sources_on_one_relation():
    checked = check(moml(chain(
        ("A", "ptolemy.actor.lib.Const", ""), ("B", "ptolemy.actor.lib.Const", ""),
        ("D", "ptolemy.actor.lib.gui.Display", ""),
        links=[("A.output", "r"), ("B.output", "r"), ("D.input", "r")]), director=""))
    problems = "\n".join(checked.problems)
    assert "no director" in problems and "more than one source" in problems


def test_parameter_overrides_by_full_name(tmp_path):
    code, events = run(tmp_path, moml(RAMP_TO_DISPLAY, iterations=3),
                       parameters={".model.Ramp.init": 10, ".model.Ramp.step": "5 * 2",
                                   ".model.SDF Director.iterations": 2})
    assert code == 0
    assert messages(events) == ["10", "20"]
    checked = check(moml(RAMP_TO_DISPLAY), overrides={".model.Ramp.nosuch": 1,
                                                      ".other.Ramp.step": 1})
    assert checked.problems == ["unknown parameter .model.Ramp.nosuch",
                                "unknown parameter .other.Ramp.step"]


def test_parameters_see_their_containers(tmp_path):
    data = moml(chain(("Const", "ptolemy.actor.lib.Const", prop("value", "base * 2 + 1")),
                      ("Display", "ptolemy.actor.lib.gui.Display", ""),
                      links=[("Const.output", "r"), ("Display.input", "r")]),
                extra=prop("base", "20"))
    code, events = run(tmp_path, data)
    assert (code, messages(events)) == (0, ["41"])
    code, events = run(tmp_path, data, parameters={".model.base": 1})
    assert messages(events)[-1] == "3"


def test_params_table_lists_defaults():
    checked = check((WORKFLOWS / "hello.xml").read_bytes())
    table = {row["name"]: row for row in checked.model.parameter_table()}
    assert table[".hello.Greeting.value"]["default"] == "Hello, world"
    assert table[".hello.Greeting.value"]["string"] is True
    assert table[".hello.SDF Director.iterations"]["default"] == "1"


def test_policy_replace_remove_and_reject(tmp_path):
    body = chain(("Ramp", "ptolemy.actor.lib.Ramp", ""),
                 ("Display", "ptolemy.actor.lib.gui.Display", ""),
                 ("Record", "ptolemy.actor.lib.Recorder", ""),
                 links=[("Ramp.output", "r"), ("Display.input", "r"), ("Record.input", "r")])
    code, events = run(tmp_path, moml(body, iterations=2), policy={
        "ptolemy.actor.lib.gui.Display": "replace:ptolemy.actor.lib.Discard",
        "ptolemy.actor.lib.Recorder": "remove"})
    assert code == 0
    notes = [(e["actor"], e["text"]) for e in events if e["type"] == "message"]
    assert notes == [
        (".model.Display", "replaced .model.Display (ptolemy.actor.lib.gui.Display) by "
                           "ptolemy.actor.lib.Discard"),
        (".model.Record", "removed .model.Record (ptolemy.actor.lib.Recorder): not allowed on "
                          "this server"),
    ]
    checked = check(moml(body), policy={"ptolemy.actor.lib.Ramp": "reject"})
    assert checked.problems == [".model.Ramp: actor class ptolemy.actor.lib.Ramp is not allowed "
                                "on this server"]
    assert check(moml(body), policy={"ptolemy.actor.lib.Ramp": "maybe"}).problems


# -- directors ----------------------------------------------------------------------


def test_sdf_runs_iterations_in_dataflow_order(tmp_path):
    # Display is listed first but must fire after the Ramp.
    body = chain(("Display", "ptolemy.actor.lib.gui.Display", ""),
                 ("Ramp", "ptolemy.actor.lib.Ramp", ""),
                 links=[("Ramp.output", "r"), ("Display.input", "r")])
    code, events = run(tmp_path, moml(body, iterations=4))
    assert (code, messages(events)) == (0, ["0", "1", "2", "3"])
    progress = [e["fraction"] for e in events if e["type"] == "progress"]
    assert progress[-1] == 1.0 and progress == sorted(progress)
    assert events[-1] == {**events[-1], "type": "end", "exit_code": 0, "state": "finished"}


def test_sdf_stops_when_a_source_reaches_its_limit(tmp_path):
    body = chain(("Ramp", "ptolemy.actor.lib.Ramp", prop("firingCountLimit", "3")),
                 ("Display", "ptolemy.actor.lib.gui.Display", ""),
                 links=[("Ramp.output", "r"), ("Display.input", "r")])
    code, events = run(tmp_path, moml(body, iterations=0))
    assert (code, messages(events)) == (0, ["0", "1", "2"])


def test_pn_runs_to_quiescence(tmp_path):
    body = chain(("Seq", "ptolemy.actor.lib.Sequence", prop("values", "{3, 1, 4}")),
                 ("Display", "ptolemy.actor.lib.gui.Display", ""),
                 links=[("Seq.output", "r"), ("Display.input", "r")])
    code, events = run(tmp_path, moml(body, director="PN"))
    assert (code, messages(events)) == (0, ["3", "1", "4"])


def test_multiport_channels_and_hyperedges(tmp_path):
    body = chain(("A", "ptolemy.actor.lib.Const", prop("value", "1")),
                 ("B", "ptolemy.actor.lib.Const", prop("value", "2")),
                 ("Check", "ptolemy.actor.lib.Test", prop("correctValues", "{{1, 2}}")),
                 ("Echo", "ptolemy.actor.lib.Recorder", ""),
                 links=[("A.output", "a"), ("B.output", "b"), ("Check.input", "a"),
                        ("Check.input", "b"), ("Echo.input", "a")])
    code, events = run(tmp_path, moml(body))
    assert code == 0 and messages(events) == ["1"]


def test_test_actor_fails_the_run_on_a_wrong_value(tmp_path):
    body = chain(("Ramp", "ptolemy.actor.lib.Ramp", ""),
                 ("Check", "ptolemy.actor.lib.Test", prop("correctValues", "{0, 1, 5}")),
                 links=[("Ramp.output", "r"), ("Check.input", "r")])
    code, events = run(tmp_path, moml(body, iterations=3))
    assert code == 1
    error = next(e for e in events if e["type"] == "error")
    assert error["actor"] == ".model.Check" and "token 2 is 2, expected 5" in error["message"]
    assert events[-1]["state"] == "failed" and "expected 5" in events[-1]["error"]
    code, events = run(tmp_path, moml(body, iterations=2))
    assert code == 1 and "received 2 of the 3 expected values" in events[-1]["error"]


def test_products_and_manifest(tmp_path):
    body = chain(("Ramp", "ptolemy.actor.lib.Ramp", ""),
                 ("Out", "ptolemy.actor.lib.io.LineWriter", prop("fileName", "n.txt")),
                 links=[("Ramp.output", "r"), ("Out.input", "r")])
    code, events = run(tmp_path, moml(body, iterations=3))
    assert code == 0
    products = tmp_path / "job" / "products"
    assert (products / "n.txt").read_text() == "0\n1\n2\n"
    manifest = json.loads((products / ".manifest.json").read_text())
    assert manifest["n.txt"]["size"] == 6 and manifest["n.txt"]["actor"] == ".model.Out"
    assert [e["name"] for e in events if e["type"] == "product"] == ["n.txt"]


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/passwd", "a/b.txt", ".hidden"])
def test_product_names_never_escape(tmp_path, name):
    body = chain(("Ramp", "ptolemy.actor.lib.Ramp", ""),
                 ("Out", "ptolemy.actor.lib.io.LineWriter", prop("fileName", name)),
                 links=[("Ramp.output", "r"), ("Out.input", "r")])
    code, events = run(tmp_path, moml(body))
    assert code == 1 and "product name" in events[-1]["error"]
    assert not (tmp_path / "escape.txt").exists()


def test_file_reader_stays_in_the_job_directory(tmp_path):
    body = chain(("Read", "ptolemy.actor.lib.io.FileReader", prop("fileOrURL", "{}")),
                 ("Display", "ptolemy.actor.lib.gui.Display", ""),
                 links=[("Read.output", "r"), ("Display.input", "r")])
    (tmp_path / "job" / "inputs").mkdir(parents=True)
    (tmp_path / "job" / "inputs" / "data.txt").write_text("payload")
    code, events = run(tmp_path, moml(body.replace("{}", "inputs/data.txt")))
    assert (code, messages(events)) == (0, ["payload"])
    code, events = run(tmp_path, moml(body.replace("{}", "../../etc/passwd")))
    assert code == 1 and "outside the job directory" in events[-1]["error"]


def test_invalid_workflow_ends_with_its_problems(tmp_path):
    code, events = run(tmp_path, moml('<entity name="X" class="org.example.Nope"/>'))
    assert code == 1
    assert events[-2]["type"] == "error" and "org.example.Nope" in events[-2]["problems"][0]
    assert events[-1]["type"] == "end" and events[-1]["state"] == "failed"


def test_bad_job_directory_files(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    (job / "workflow.xml").write_bytes(moml(RAMP_TO_DISPLAY))
    (job / "parameters.json").write_text("[1, 2]")
    assert run_job(job, use_fd3=False, install_signals=False) == 1
    last = json.loads((job / "events.jsonl").read_text().splitlines()[-1])
    assert "must be a JSON object" in last["error"]
    (job / "workflow.xml").unlink()
    assert run_job(job, use_fd3=False, install_signals=False) == 1


def test_every_bundled_workflow_validates_or_names_missing_software():
    registry = Registry.default()
    for path in sorted(WORKFLOWS.glob("*.xml")):
        context = EngineContext(Path.cwd(), None, software={"R": {"path": "/x", "version": "4"},
                                                            "Octave": {"path": "/x", "version": "8"}})
        checked = check(path.read_bytes(), registry=registry, context=context)
        assert checked.problems == [], (path.name, checked.problems)


def test_schedule_is_computed_from_rates():
    top = parse_moml((WORKFLOWS / "hello.xml").read_bytes())
    model = build(top, Registry.default(), context=EngineContext(Path.cwd(), None))
    assert [a.name for a in directors.sdf_schedule(model.actors)] == ["Greeting", "Display"]
    with pytest.raises(ValidationError):
        build(top, Registry.default(), overrides={".hello.Nope.x": 1},
              context=EngineContext(Path.cwd(), None))


def test_a_model_without_actors_finishes_at_once(tmp_path):
    started = time.monotonic()
    code, events = run(tmp_path, moml("", iterations=0))
    assert code == 0 and events[-1]["state"] == "finished"
    assert time.monotonic() - started < 5
