"""
kill -9 of the daemon with running, waiting and paused jobs, then a restart:
every job ends in the right state, no event is missing or doubled, and no
engine runs twice.  While the daemon is down, one job finishes, one engine
is killed, and one record is damaged.
"""

import contextlib
import time

import psutil
import sqlalchemy as sa

from kree.store.engine import create_engine
from live import LiveKree, submit, wait_for_state
from waiting import wait_for

CONFIG = """
[supervisor]
max_running = 8
stop_grace_seconds = 2
monitor_interval_seconds = 0.2
"""
TERMINAL = ("FINISHED", "FAILED", "ABORTED")
# Iterations (of 100 ms) of the jobs that outlast the restart, and of the one
# that ends while the daemon is down.
LONG, SHORT = 200, 60


def engines(job_id):
    """The engine processes (python -m kree.engine run) of a job."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = process.info["cmdline"] or []
            if "kree.engine" in cmdline and process.environ().get("KREE_JOB_ID") == job_id:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill_engines(tmp_path):
    """Whatever a failed test left running under this directory."""
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(str(tmp_path) in part for part in process.info["cmdline"] or []):
                process.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def messages(client, job_id):
    return [m["text"] for m in client.get(f"/v1/jobs/{job_id}/messages?limit=500").json["messages"]]


def check_log(client, job_id):
    events = client.get(f"/v1/jobs/{job_id}/events?limit=500").json["events"]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    state = "NEW"
    for event in events:
        if event["type"] == "job.state":
            assert event["data"]["from"] == state, events
            state = event["data"]["to"]
    return events


def test_kill_9_and_restart(tmp_path):
    server = LiveKree(tmp_path, frontends=("portal",), config_text=CONFIG).start()
    client = server.client("portal")
    try:
        # Long enough to outlast the restart however busy the machine is;
        # ends_meanwhile is short enough to end while the daemon is down.
        running = submit(client, "sleep-loop.xml", parameters={
            ".sleeper.period": 100, ".sleeper.SDF Director.iterations": LONG})
        waiting = submit(client, "ask-input.xml")
        paused = submit(client, "sleep-loop.xml", parameters={
            ".sleeper.period": 100, ".sleeper.SDF Director.iterations": LONG})
        ends_meanwhile = submit(client, "sleep-loop.xml", parameters={
            ".sleeper.period": 100, ".sleeper.SDF Director.iterations": SHORT})
        dies_meanwhile = submit(client, "sleep-loop.xml", parameters={
            ".sleeper.period": 100, ".sleeper.SDF Director.iterations": LONG})
        damaged = submit(client, "sleep-loop.xml", parameters={
            ".sleeper.period": 100, ".sleeper.SDF Director.iterations": LONG})
        held = submit(client, "hello.xml", queue=True)
        for job in (ends_meanwhile, running, paused, dies_meanwhile, damaged):
            wait_for_state(client, job["id"], "RUNNING")
        wait_for_state(client, waiting["id"], "WAITING")
        # The engine is under way (it has said something) before it is paused.
        wait_for(lambda: messages(client, paused["id"]), "a first message of the paused job")
        assert client.post(f"/v1/jobs/{paused['id']}/pause").json["state"] == "PAUSED"
        wait_for_state(client, held["id"], "FINISHED")

        server.process.kill()  # kill -9
        server.process.wait()
        server._stderr.close()

        # Engines outlive the daemon.
        for job in (running, waiting, paused, dies_meanwhile, ends_meanwhile):
            assert len(engines(job["id"])) == 1, job
        for process in engines(dies_meanwhile["id"]):
            process.kill()
        engine = create_engine(server.config.store_url)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE jobs SET paused_from = 'BOGUS' WHERE id = :id"),
                         {"id": damaged["id"]})
        engine.dispose()
        damaged_engines = engines(damaged["id"])
        # ends_meanwhile finishes while nobody watches.
        wait_for(lambda: not engines(ends_meanwhile["id"]), "ends_meanwhile's engine to end",
                 timeout=120)

        started = time.monotonic()
        server.start()
        restart_seconds = time.monotonic() - started
        client = server.client("portal")

        # Nothing runs twice.
        for job in (running, waiting, paused):
            assert len(engines(job["id"])) == 1

        assert wait_for_state(client, ends_meanwhile["id"], TERMINAL)["state"] == "FINISHED"
        assert messages(client, ends_meanwhile["id"]) == [str(i) for i in range(SHORT)]

        lost = wait_for_state(client, dies_meanwhile["id"], TERMINAL)
        assert lost["state"] == "FAILED" and lost["error"] == "lost during daemon restart"

        broken = wait_for_state(client, damaged["id"], TERMINAL)
        assert broken["state"] == "FAILED" and broken["error"].startswith("quarantined")
        for process in damaged_engines:  # quarantined jobs' engines are not followed
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()

        state = client.get(f"/v1/jobs/{paused['id']}/state").json
        assert state["state"] == "PAUSED"
        assert all(p.status() == psutil.STATUS_STOPPED for p in engines(paused["id"]))
        client.post(f"/v1/jobs/{paused['id']}/resume")

        assert client.get(f"/v1/jobs/{waiting['id']}/state").json["state"] == "WAITING"
        reply = client.post(f"/v1/jobs/{waiting['id']}/input", {"name": "Ada", "count": 3})
        assert reply.status == 200

        for job, expected in ((running, [str(i) for i in range(LONG)]),
                              (paused, [str(i) for i in range(LONG)]),
                              (waiting, ["Hello Ada x3"])):
            assert wait_for_state(client, job["id"], TERMINAL)["state"] == "FINISHED", job
            assert messages(client, job["id"]) == expected  # none lost, none doubled
        for job in (running, waiting, paused, ends_meanwhile, dies_meanwhile, damaged, held):
            check_log(client, job["id"])
        assert restart_seconds < 15
    finally:
        server.stop()
        kill_engines(tmp_path)


def test_stop_jobs_on_exit(tmp_path):
    server = LiveKree(tmp_path, frontends=("portal",), config_text=CONFIG)
    server.extra_args = ["--stop-jobs-on-exit"]
    server.start()
    client = server.client("portal")
    job = submit(client, "sleep-loop.xml", parameters={".sleeper.period": 100})
    wait_for_state(client, job["id"], "RUNNING")
    # RUNNING comes just before the engine starts (so a pause can find the job).
    wait_for(lambda: engines(job["id"]), "the job's engine")
    assert server.stop() == 0
    wait_for(lambda: not engines(job["id"]), "the engine stopped with the daemon")
    server.start()
    state = server.client("portal").get(f"/v1/jobs/{job['id']}/state").json
    assert state["state"] == "ABORTED"
    server.stop()


def test_sigterm_leaves_engines_running_for_the_next_start(tmp_path):
    server = LiveKree(tmp_path, frontends=("portal",), config_text=CONFIG).start()
    client = server.client("portal")
    job = submit(client, "sleep-loop.xml", parameters={
        ".sleeper.period": 100, ".sleeper.SDF Director.iterations": 20})
    wait_for_state(client, job["id"], "RUNNING")
    wait_for(lambda: engines(job["id"]), "the job's engine")
    assert server.stop() == 0
    assert len(engines(job["id"])) == 1
    server.start()
    client = server.client("portal")
    assert wait_for_state(client, job["id"], TERMINAL)["state"] == "FINISHED"
    assert messages(client, job["id"]) == [str(i) for i in range(20)]
    check_log(client, job["id"])
    server.stop()
