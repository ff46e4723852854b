"""
Schemathesis drives the OpenAPI document against a live kreed (fuzzing and
stateful phases): no 5xx, and every response conforms to the document.
Bounded in examples, not timed.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from live import LiveKree

ST = Path(sys.executable).parent / "st"
pytestmark = pytest.mark.skipif(not ST.exists(),
                                reason="schemathesis is not installed (the test extra has it)")


def test_schemathesis_finds_no_server_error_or_schema_violation(tmp_path):
    server = LiveKree(tmp_path, frontends=("portal",),
                      config_text="[supervisor]\nmax_running = 1\nstop_grace_seconds = 1\n")
    server.extra_args = ["--stop-jobs-on-exit"]
    server.start()
    cert, key = server.frontend_files("portal")
    try:
        result = subprocess.run(
            [str(ST), "run", str(Path(__file__).parent.parent / "kree/api/openapi.json"),
             "--url", f"https://localhost:{server.port}",
             "--tls-verify", str(server.ca_path),
             "--request-cert", str(cert), "--request-cert-key", str(key),
             "--phases", "fuzzing,stateful",
             "--checks", "all", "--exclude-checks", "positive_data_acceptance",
             "--max-examples", "25", "--workers", "2", "--seed", "1",
             "--no-color"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-6000:]
        assert " passed" in result.stdout
        assert '"level": "error"' not in (server.state_dir / "logs" / "kreed.log").read_text()
    finally:
        assert server.stop() == 0
