"""
Third-party software that actors call: which programs exist here, where, and
their versions.  Programs are run with argument lists, never a shell, and a
bounded time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from typing import Any

# name -> (programs to look for, version arguments, version pattern)
PROGRAMS = {
    "R": (["Rscript"], ["--version"], r"version (\S+)"),
    "Octave": (["octave-cli", "octave"], ["--version"], r"version (\S+)"),
    "Matlab": (["matlab"], None, None),
    "Python": ([sys.executable], None, None),
}
TIMEOUT_SECONDS = 20


def detect(names: list[str] | None = None) -> dict[str, dict[str, Any] | None]:
    """{name: {"path", "version"} or None when absent}."""
    found: dict[str, dict[str, Any] | None] = {}
    for name, (programs, version_args, pattern) in PROGRAMS.items():
        if names is not None and name not in names:
            continue
        found[name] = None
        for program in programs:
            path = shutil.which(program)
            if path is None:
                continue
            version = None
            if name == "Python":
                version = ".".join(map(str, sys.version_info[:3]))
            elif version_args:
                try:
                    result = subprocess.run([path, *version_args], capture_output=True,
                                            text=True, timeout=TIMEOUT_SECONDS)
                    match = re.search(pattern, result.stdout + result.stderr)
                    version = match.group(1) if match else None
                except (OSError, subprocess.TimeoutExpired):
                    continue
            found[name] = {"path": path, "version": version}
            break
    return found
