"""
The sandbox's cost per engine start: what kree.engine.sandbox.apply takes
in a fresh engine process (rlimits, the Landlock ruleset and its rules, the
account change and mount namespace when run as root, seccomp), with the
spec kreed gives a real job, against the same process with mode "none"
(the baseline, measured in the same run, interleaved), plus what kreed
spends handing a job directory over to the engine account
(kree.sandbox.Sandbox.hand_over).

    .venv/bin/python bench/sandbox.py [--starts 40]

Prints medians (ms) and one line RESULT {...} like the other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kree.config import load_config  # noqa: E402
from kree.sandbox import Sandbox  # noqa: E402

TIMED = r"""
import sys, time
from kree.engine import sandbox
spec = sandbox.spec_from_environment()
started = time.perf_counter()
sandbox.apply(spec)
print((time.perf_counter() - started) * 1000)
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--starts", type=int, default=40, help="engine starts per mode")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="kree-bench-sandbox-", dir="/var/tmp"))
    try:
        (base / "kree.toml").write_text('state_dir = "state"\n')
        config = load_config(base / "kree.toml")
        sandbox = Sandbox(config)
        if sandbox.problem is not None:
            raise SystemExit(f"bench/sandbox.py: {sandbox.problem.message}")
        times: dict[str, list[float]] = {"landlock": [], "none": []}
        hand_over: list[float] = []
        for i in range(args.starts):
            for mode in ("none", "landlock"):  # interleaved: the same load for both
                job = config.jobs_dir / f"job-{mode}-{i}"
                (job / "products").mkdir(parents=True)
                for name in ("workflow.xml", "parameters.json", "policy.json"):
                    (job / name).write_text("{}")
                started = time.perf_counter()
                sandbox.hand_over(job)
                if mode == "landlock":
                    hand_over.append((time.perf_counter() - started) * 1000)
                spec = sandbox.spec_for(job, {})
                env = {**os.environ, **sandbox.environment(job, {})}
                env["KREE_SANDBOX"] = json.dumps({**json.loads(spec.to_env()), "mode": mode})
                out = subprocess.run([sys.executable, "-c", TIMED], env=env, cwd=job,
                                     capture_output=True, text=True, check=True, timeout=60)
                times[mode].append(float(out.stdout))
        median = {f"apply_{mode}_ms": round(statistics.median(values), 3)
                  for mode, values in times.items()}
        median["apply_cost_ms"] = round(median["apply_landlock_ms"] - median["apply_none_ms"], 3)
        median["hand_over_ms"] = round(statistics.median(hand_over), 3)
        print(f"sandbox: apply {median['apply_landlock_ms']:.2f} ms (landlock) vs "
              f"{median['apply_none_ms']:.2f} ms (none): {median['apply_cost_ms']:.2f} ms per "
              f"engine start; hand_over {median['hand_over_ms']:.2f} ms per job "
              f"(as {sandbox.describe()['user'] or 'kreed’s own account'})")
        print("RESULT " + json.dumps({"benchmark": "sandbox", "config": {"starts": args.starts},
                                      "median": median, "host": {"cpus": os.cpu_count()}}))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
