"""
kree-admin's console commands (jobs, actors, software, cache, config), run as
the real `python -m kree.admin` against a state directory prepared with the
store API, with no daemon running.
"""

import hashlib
import json
import subprocess
import sys
import time

import pytest

from kree.ids import new_job_id
from kree.states import Action
from kree.store import Store, migrate

PYTHON_SCRIPT = "ptolemy.actor.lib.python.PythonScript"
RAMP = "ptolemy.actor.lib.Ramp"


def admin(state, *args):
    return subprocess.run(
        [sys.executable, "-m", "kree.admin", "--state-dir", str(state), *args],
        capture_output=True, text=True, timeout=60,
    )


def admin_json(state, *args):
    result = admin(state, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def rows(stdout):
    """A table's lines split into columns (the header first)."""
    return [line.split() for line in stdout.splitlines()]


def open_store(state):
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = Store.from_url(f"sqlite:///{state / 'kree.db'}", None)
    store.pool.run_in_thread(migrate.upgrade)
    return store


def make_job(store, frontend, seconds, **kwargs):
    # Ids sort by creation time: a later `seconds` is a newer job.
    job_id = new_job_id(now=time.time() - 1000 + seconds)
    job, _ = store.pool.run_in_thread(
        store.jobs.create_thd, job_id=job_id, frontend_id=frontend.id,
        workflow_uri=kwargs.pop("workflow_uri", "https://example.org/wf.xml"),
        job_dir=f"/jobs/{job_id}", **kwargs)
    return job


def transition(store, job_id, *actions, **kwargs):
    for action in actions:
        job, _ = store.pool.run_in_thread(store.jobs.transition_thd, job_id, action, **kwargs)
    return job


@pytest.fixture(scope="module")
def jobs_state(tmp_path_factory):
    """Frontends portal and gateway with three jobs; returns (state, {name: job})."""
    state = tmp_path_factory.mktemp("jobs") / "state"
    store = open_store(state)
    try:
        portal = store.pool.run_in_thread(store.frontends.add_thd, "portal", "ab" * 32)
        gateway = store.pool.run_in_thread(store.frontends.add_thd, "gateway", "cd" * 32)
        queued = make_job(store, portal, 1, user="alice")
        queued = transition(store, queued.id, Action.QUEUE)
        done = make_job(store, portal, 2, user="bob",
                        parameters={".model.Ramp.step": 2, ".model.greeting": "hello"},
                        inputs={"data": "https://example.org/data.csv"})
        transition(store, done.id, Action.QUEUE, Action.DISPATCH)
        for i in range(25):
            store.pool.run_in_thread(store.jobs.add_message_thd, done.id, f"message {i}",
                                     level="warn" if i == 24 else "info")
        done = transition(store, done.id, Action.FINISH, updates={"exit_code": 0})
        new = make_job(store, gateway, 3, user="alice")
    finally:
        store.stop()
    return state, {"queued": queued, "done": done, "new": new}


def test_jobs_list_and_filters(jobs_state):
    state, jobs = jobs_state
    result = admin(state, "jobs", "list")
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert table[0] == ["ID", "FRONTEND", "USER", "STATE", "CREATED", "ENDED", "WORKFLOW"]
    assert [(r[0], r[1], r[2], r[3]) for r in table[1:]] == [
        (jobs["new"].id, "gateway", "alice", "NEW"),
        (jobs["done"].id, "portal", "bob", "FINISHED"),
        (jobs["queued"].id, "portal", "alice", "QUEUED"),
    ]
    assert table[1][5] == "-" and table[2][5].endswith("Z")

    listed = admin_json(state, "jobs", "list")
    assert set(listed) == {"jobs"}
    assert [(j["id"], j["state"]) for j in listed["jobs"]] == [
        (jobs["new"].id, "NEW"), (jobs["done"].id, "FINISHED"), (jobs["queued"].id, "QUEUED")]
    done = listed["jobs"][1]
    assert done["frontend"] == "portal" and done["exit_code"] == 0
    assert done["workflow"] == "https://example.org/wf.xml"
    assert done["started"] and done["ended"] and done["queued"] and done["created"]
    assert {"paused_from", "error", "progress", "cpu_seconds", "peak_memory_bytes"} <= set(done)

    def ids(*args):
        return [j["id"] for j in admin_json(state, "jobs", "list", *args)["jobs"]]

    assert ids("--state", "queued") == [jobs["queued"].id]
    assert ids("--frontend", "portal", "--user", "alice") == [jobs["queued"].id]
    assert ids("--user", "alice", "--limit", "1") == [jobs["new"].id]

    result = admin(state, "jobs", "list", "--frontend", "nobody")
    assert result.returncode == 1
    assert "no frontend 'nobody'" in result.stderr and "frontend list" in result.stderr
    assert admin(state, "jobs", "list", "--state", "SLEEPING").returncode == 2


def test_jobs_show(jobs_state):
    state, jobs = jobs_state
    done = jobs["done"]
    result = admin(state, "jobs", "show", done.id)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"job {done.id}"
    assert "  frontend: portal" in lines and "  state: FINISHED" in lines
    assert "  exit_code: 0" in lines
    assert "  .model.Ramp.step: 2" in lines
    assert "  data: https://example.org/data.csv (pending)" in lines
    assert "messages (the last 20 of 25):" in lines
    assert lines[lines.index("messages (the last 20 of 25):") + 1].endswith("info kree: message 5")
    assert any(line.endswith("warn kree: message 24") for line in lines)
    events_header = next(line for line in lines if line.startswith("events ("))
    assert events_header == f"events (the last 20 of {done.last_seq}):"
    assert lines[-1].startswith(f"  #{done.last_seq} ") and " job.state " in lines[-1]

    shown = admin_json(state, "jobs", "show", done.id)
    assert shown["job"]["id"] == done.id and shown["job"]["state"] == "FINISHED"
    assert shown["job"]["job_dir"] == done.job_dir
    assert shown["parameters"] == {".model.Ramp.step": 2, ".model.greeting": "hello"}
    assert [(i["name"], i["uri"]) for i in shown["inputs"]] == [
        ("data", "https://example.org/data.csv")]
    assert [m["text"] for m in shown["messages"]] == [f"message {i}" for i in range(5, 25)]
    assert shown["message_count"] == 25
    assert [e["seq"] for e in shown["events"]] == list(range(done.last_seq - 19,
                                                             done.last_seq + 1))
    assert shown["events"][-1]["data"]["to"] == "FINISHED"

    result = admin(state, "--json", "jobs", "show", "01NOSUCHJOB")
    assert result.returncode == 1
    assert "no job '01NOSUCHJOB'" in json.loads(result.stdout)["error"]
    assert "no job '01NOSUCHJOB'" in result.stderr


def test_actors_list_and_policy(tmp_path):
    state = tmp_path / "state"
    result = admin(state, "actors", "list")
    assert result.returncode == 0, result.stderr
    table = {r[0]: r for r in rows(result.stdout)}
    assert table["CLASS"] == ["CLASS", "PACKAGE", "POLICY", "SOFTWARE"]
    assert table[RAMP][1:3] == ["kree", "allow"]
    assert table[PYTHON_SCRIPT][2] == "reject"

    result = admin(state, "actors", "restrict", RAMP, "--policy", "remove")
    assert result.returncode == 0, result.stderr
    assert f"{RAMP}: allow -> remove" in result.stdout and result.stderr == ""
    result = admin(state, "actors", "allow", "com.example.Future")
    assert result.returncode == 0, result.stderr
    assert "not a class the engine knows" in result.stderr
    assert "com.example.Future" in result.stdout

    listed = admin_json(state, "actors", "list")
    by_class = {a["class"]: a for a in listed["actors"]}
    assert by_class[RAMP]["policy"] == "remove" and by_class[RAMP]["policy_from"] == "rule"
    assert by_class[PYTHON_SCRIPT]["policy"] == "reject"
    assert by_class[PYTHON_SCRIPT]["policy_from"] == "default"
    assert listed["other_rules"] == {"com.example.Future": "allow"}

    for bad in ("sometimes", "replace:", "allow"):
        result = admin(state, "actors", "restrict", RAMP, "--policy", bad)
        assert result.returncode == 2, (bad, result.stderr)
        assert "replace:CLASS" in result.stderr and "reject" in result.stderr

    store = open_store(state)
    try:
        assert store.pool.run_in_thread(store.policies.all_thd) == {
            RAMP: "remove", "com.example.Future": "allow"}
    finally:
        store.stop()


def test_software_rescan_and_list(tmp_path):
    state = tmp_path / "state"
    result = admin(state, "software", "list")
    assert result.returncode == 0 and "kree-admin software rescan" in result.stdout

    result = admin(state, "software", "rescan")
    assert result.returncode == 0, result.stderr
    assert "detecting R, Octave, Matlab, Python ..." in result.stderr
    assert result.stderr.rstrip().endswith("done")
    assert rows(result.stdout)[0] == ["NAME", "PATH", "VERSION"]

    listed = admin_json(state, "software", "list")
    by_name = {s["name"]: s for s in listed["software"]}
    assert set(by_name) == {"R", "Octave", "Matlab", "Python"}
    assert by_name["Python"]["installed"] and by_name["Python"]["path"]
    assert by_name["Python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    for entry in by_name.values():
        assert entry["installed"] == (entry["path"] is not None)


def test_cache_list_and_purge(tmp_path):
    state = tmp_path / "state"
    cache_dir = state / "cache"
    store = open_store(state)
    cache_dir.mkdir()

    def body(data):
        sha = hashlib.sha256(data).hexdigest()
        (cache_dir / sha).write_bytes(data)
        return sha

    a, b, needed, orphan = (body(x) for x in (b"<a/>", b"<b/>", b"<needed/>", b"<orphan/>"))
    (cache_dir / "README").write_text("not a cache body")
    try:
        record = store.cache.record_fetch_thd
        store.pool.run_in_thread(record, "https://example.org/a.xml", sha256=a, size=4)
        store.pool.run_in_thread(record, "https://example.org/b.xml", sha256=b, size=4)
        store.pool.run_in_thread(record, "https://mirror.example.org/b.xml", sha256=b, size=4)
        store.pool.run_in_thread(record, f"kree:workflow/{needed}", sha256=needed, size=9)
        # A queued job still needs its uploaded workflow.
        frontend = store.pool.run_in_thread(store.frontends.add_thd, "portal", "ab" * 32)
        # Jobs record the workflow version they were created with.
        job = make_job(store, frontend, 1, workflow_uri=f"kree:workflow/{needed}",
                       workflow_sha256=needed)
        transition(store, job.id, Action.QUEUE)
    finally:
        store.stop()

    result = admin(state, "cache", "list")
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert table[0] == ["URI", "SHA256", "SIZE", "FETCHED", "CHECKED"]
    assert [r[:3] for r in table[1:]] == [
        ["https://example.org/a.xml", a, "4"], ["https://example.org/b.xml", b, "4"],
        ["https://mirror.example.org/b.xml", b, "4"], [f"kree:workflow/{needed}", needed, "9"]]

    # b.xml's body stays: the mirror's entry still references it.
    purged = admin_json(state, "cache", "purge", "https://example.org/b.xml")
    assert (purged["entries"], purged["files"]) == (1, 0)
    assert (cache_dir / b).exists()
    result = admin(state, "cache", "purge", "https://example.org/b.xml")
    assert result.returncode == 1 and "no cache entry" in result.stderr

    result = admin(state, "cache", "purge")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "purged 3 entries and 3 files; kept 1 file that unfinished jobs still need")
    assert {p.name for p in cache_dir.iterdir()} == {"README", needed}
    assert admin_json(state, "cache", "list") == {"entries": []}


def test_config_check(tmp_path):
    good = tmp_path / "kree.toml"
    good.write_text('state_dir = "var/kree"\n[server]\nlisten = "0.0.0.0:9443"\n')
    result = subprocess.run([sys.executable, "-m", "kree.admin", "config", "check", str(good)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("valid")
    assert f"  state dir: {tmp_path / 'var' / 'kree'}" in lines
    assert f"  store: sqlite:///{tmp_path / 'var' / 'kree' / 'kree.db'}" in lines

    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlisten = "nowhere"\n[supervisor]\nmax_running = -1\n'
                   "[bogus]\nx = 1\n")
    result = admin(tmp_path / "state", "--json", "config", "check", str(bad))
    assert result.returncode == 1
    problems = json.loads(result.stdout)["problems"]
    assert len(problems) == 3
    for problem in problems:
        assert problem in result.stderr
    result = admin(tmp_path / "state", "config", "check", str(tmp_path / "missing.toml"))
    assert result.returncode == 1 and "cannot read" in result.stderr


def test_help_lists_the_console_commands():
    result = subprocess.run([sys.executable, "-m", "kree.admin", "--help"],
                            capture_output=True, text=True, timeout=60)
    for command in ("jobs", "actors", "software", "cache", "config"):
        assert f"    {command} " in result.stdout
