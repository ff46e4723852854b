"""
The CWL engine program (python -m kree.cwl) on job directories, as real
processes running real cwltool: the engine protocol's events, the output
object and its products, a failing step, an unsupported requirement, a
stop, and the validate and params commands in kree.engine's shapes.
"""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kree.cwl import document
from kree.engines import CWL as CWL_KIND, MOML, kind_of
from waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
CWL = REPO / "workflows" / "cwl"


def job_dir(tmp_path: Path, workflow: str | bytes, parameters=None, inputs=None) -> Path:
    directory = tmp_path / "job"
    (directory / "inputs").mkdir(parents=True)
    data = workflow if isinstance(workflow, bytes) else (CWL / workflow).read_bytes()
    (directory / "workflow.cwl").write_bytes(data)
    (directory / "parameters.json").write_text(json.dumps(parameters or {}))
    for name, text in (inputs or {}).items():
        (directory / "inputs" / name).write_text(text)
    return directory


def engine(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kree.cwl", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def run(directory: Path) -> tuple[int, list[dict]]:
    process = engine("run", "--no-events-fd", str(directory))
    _, err = process.communicate(timeout=120)
    events = [json.loads(line) for line in (directory / "events.jsonl").read_text().splitlines()]
    return process.returncode, events


def of_type(events, kind):
    return [e for e in events if e["type"] == kind]


def test_a_pipeline_finishes_with_its_outputs_as_products(tmp_path):
    directory = job_dir(tmp_path, "pipeline.cwl", {"message": "one two three"})
    code, events = run(directory)
    assert code == 0, events
    assert events[-1] == {**events[-1], "type": "end", "exit_code": 0, "state": "finished"}
    texts = [e["text"] for e in of_type(events, "message")]
    assert "step echo started" in texts and "step count completed success" in texts
    fractions = [e["fraction"] for e in of_type(events, "progress")]
    assert 0.5 in fractions and fractions[-1] == 1.0
    products = {e["name"]: e for e in of_type(events, "product")}
    assert set(products) == {"greeting.txt", "words.txt"}
    assert (directory / "products" / "greeting.txt").read_text() == "one two three\n"
    assert (directory / "products" / "words.txt").read_text().strip() == "3"
    results = json.loads((directory / "results.json").read_text())
    assert results["words"] == {**results["words"], "class": "File", "product": "words.txt",
                                "basename": "words.txt"}
    assert "path" not in results["words"] and "location" not in results["words"]
    # Everything cwltool wrote is inside the job directory.
    assert (directory / "outputs" / "greeting.txt").exists()


def test_a_file_input_comes_from_the_staged_inputs(tmp_path):
    tool = b"""cwlVersion: v1.2
class: CommandLineTool
baseCommand: [wc, -l]
inputs:
  table:
    type: File
    inputBinding: {position: 1}
outputs:
  lines: {type: stdout}
stdout: lines.txt
"""
    directory = job_dir(tmp_path, tool, inputs={"table": "a\nb\n"})
    code, events = run(directory)
    assert code == 0, events
    assert (directory / "products" / "lines.txt").read_text().split()[0] == "2"


def test_a_failing_step_fails_the_job_naming_it(tmp_path):
    code, events = run(job_dir(tmp_path, "fail.cwl"))
    assert code == 1
    end = events[-1]
    assert end["type"] == "end" and end["state"] == "failed"
    assert "step broken failed (exit status 3)" in end["error"]
    assert any(e["text"] == "step broken completed permanentFail" and e["level"] == "error"
               for e in of_type(events, "message"))


def test_an_unsupported_requirement_exits_33_naming_it(tmp_path):
    tool = b"""cwlVersion: v1.2
class: CommandLineTool
requirements:
  DockerRequirement: {dockerPull: debian:stable}
baseCommand: echo
inputs: []
outputs: []
"""
    code, events = run(job_dir(tmp_path, tool))
    assert code == 33
    assert events[-1]["exit_code"] == 33 and "DockerRequirement" in events[-1]["error"]


def test_sigterm_stops_the_step_and_the_engine(tmp_path):
    directory = job_dir(tmp_path, "sleep.cwl")
    process = engine("run", "--no-events-fd", str(directory))
    events_file = directory / "events.jsonl"

    def sleeping():
        return [p for p in _children(process.pid) if p.name() == "sleep"]

    wait_for(sleeping, "the step's sleep to run", timeout=60)
    tree = sleeping()
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 3
    last = json.loads(events_file.read_text().splitlines()[-1])
    assert last == {**last, "type": "end", "state": "stopped", "exit_code": 3}
    wait_for(lambda: not any(p.is_running() and p.status() != "zombie" for p in tree),
             "the step's process to end")


def _children(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_references_to_other_documents_are_refused_before_cwltool_runs(tmp_path):
    workflow = b"""cwlVersion: v1.2
class: Workflow
inputs: []
outputs: []
steps:
  fetch:
    run: https://example.org/tool.cwl
    in: {}
    out: []
"""
    code, events = run(job_dir(tmp_path, workflow))
    assert code == 1 and "https://example.org/tool.cwl" in events[-1]["error"]
    assert not (tmp_path / "job" / "outputs").exists()


def test_validate_and_params_speak_kree_engines_shapes(tmp_path):
    process = engine("validate", str(CWL / "echo.cwl"), "--policy", "-", "--max-memory",
                     str(512 * 1024 * 1024), "--new-session", stdin=subprocess.PIPE)
    out, _ = process.communicate(b"{}", timeout=60)
    assert process.returncode == 0
    report = json.loads(out)
    assert report["valid"] and report["problems"] == [] and report["messages"] == []
    assert report["parameters"] == [{"name": "message", "default": "Hello from KREE",
                                     "string": True, "type": "string", "doc": "What to write."}]

    bad = tmp_path / "bad.cwl"
    bad.write_text("cwlVersion: v1.2\nclass: CommandLineTool\nbaseCommand: echo\n"
                   "inputs: {x: strin}\noutputs: []\n")
    process = engine("validate", str(bad))
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    report = json.loads(out)
    assert not report["valid"] and "strin" in report["problems"][0]

    process = engine("params", str(CWL / "sleep.cwl"))
    out, _ = process.communicate(timeout=60)
    assert json.loads(out)["parameters"][0] == {
        "name": "seconds", "default": "600", "string": False, "type": "int"}


@pytest.mark.parametrize("text, problem", [
    (b"<entity name='x'/>", "cwlVersion"),
    (b"- a\n- b\n", "mapping"),
    (b"cwlVersion: v1.2\n$graph:\n- {class: CommandLineTool, id: a}\n- {id: b}\n", "#main"),
    (b"a: [unclosed\n", "YAML"),
])
def test_documents_that_are_not_cwl(text, problem):
    with pytest.raises(document.DocumentError) as caught:
        document.main_process(document.parse(text))
    assert problem in str(caught.value)


def test_a_packed_document_runs_its_main(tmp_path):
    packed = json.dumps({
        "cwlVersion": "v1.2",
        "$graph": [
            {"id": "#echo", "class": "CommandLineTool", "baseCommand": "echo",
             "inputs": [{"id": "#echo/text", "type": "string", "inputBinding": {"position": 1}}],
             "outputs": [{"id": "#echo/out", "type": "stdout"}], "stdout": "said.txt"},
            {"id": "#main", "class": "Workflow",
             "inputs": [{"id": "#main/word", "type": "string", "default": "packed"}],
             "outputs": [{"id": "#main/said", "type": "File", "outputSource": "#main/say/out"}],
             "steps": [{"id": "#main/say", "run": "#echo",
                        "in": [{"id": "#main/say/text", "source": "#main/word"}],
                        "out": ["#main/say/out"]}]},
        ],
    }).encode()
    directory = job_dir(tmp_path, packed)
    assert [i.name for i in document.inputs(document.main_process(document.parse(packed)))] == [
        "word"]
    code, events = run(directory)
    assert code == 0, events
    assert (directory / "products" / "said.txt").read_text() == "packed\n"


def test_which_engine_kind_a_document_is():
    assert kind_of((REPO / "workflows" / "hello.xml").read_bytes()) is MOML
    assert kind_of(b"\xef\xbb\xbf\n  <entity name='x'/>") is MOML
    assert kind_of((CWL / "pipeline.cwl").read_bytes()) is CWL_KIND
    big_packed = json.dumps({"$graph": [{"id": "#main", "doc": "x" * 100_000}],
                             "cwlVersion": "v1.2"}).encode()
    assert kind_of(big_packed) is CWL_KIND
    assert kind_of(b"neither one nor the other") is MOML  # MoML's check says what is wrong


def test_only_a_finished_run_leaves_an_output_object(tmp_path):
    """A tool may write in the job directory; a failed run's results.json is not kept."""
    liar = b"""cwlVersion: v1.2
class: CommandLineTool
baseCommand: [sh, -c]
arguments: ['echo "{\\"forged\\": 1}" > ../../results.json; exit 1']
inputs: []
outputs: []
"""
    directory = job_dir(tmp_path, liar)
    code, events = run(directory)
    assert code == 1, events
    assert not (directory / "results.json").exists()


def test_kreed_reads_only_a_reasonable_output_object(tmp_path):
    from kree import jobdir

    (tmp_path / "results.json").write_text(json.dumps({"a": {"class": "File", "product": "a"}}))
    assert jobdir.read_outputs(tmp_path) == {"a": {"class": "File", "product": "a"}}
    (tmp_path / "results.json").write_text('{"a": ' + "[" * 500 + "]" * 500 + "}")
    assert jobdir.read_outputs(tmp_path) == {}
    (tmp_path / "results.json").write_text("[1, 2]")
    assert jobdir.read_outputs(tmp_path) == {}
    (tmp_path / "results.json").unlink()
    (tmp_path / "results.json").symlink_to("/etc/passwd")
    assert jobdir.read_outputs(tmp_path) == {}
