"""
The import contracts in .importlinter (import-linter) hold, they name every
top-level module of kree, and they do catch a back edge.
"""

import configparser
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import kree

REPO = Path(__file__).resolve().parent.parent
CONTRACTS = REPO / ".importlinter"
LINT = Path(sys.executable).with_name("lint-imports")
# What the source of each "imports nothing above it" contract may import.
MAY_IMPORT = {
    "kree.engine": set(),
    # The CWL engine reuses the engine protocol and sandbox.
    "kree.cwl": {"kree.engine"},
    "kree.store": {"kree.errors", "kree.records", "kree.states", "kree.ids"},
    "kree.states": {"kree.errors"},
}


def lint(contracts: Path, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(contracts), "--no-cache"], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def contracts() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    assert parser.read(CONTRACTS), f"{CONTRACTS} is missing"
    return parser


def names(value: str) -> set[str]:
    return {line.strip() for line in value.splitlines() if line.strip()}


def test_the_contracts_hold():
    result = lint(CONTRACTS, REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 9 kept, 0 broken." in result.stdout, result.stdout


def test_the_layer_contracts_name_every_module():
    modules = {f"kree.{m.name}" for m in pkgutil.iter_modules(kree.__path__)}
    checked = set()
    for section in contracts().values():
        if section.get("type") != "forbidden":
            continue
        (source,) = names(section["source_modules"])
        if source in MAY_IMPORT:
            forbidden = names(section["forbidden_modules"])
            missing = modules - forbidden - MAY_IMPORT[source] - {source}
            assert not missing, f"{section.name}: name {sorted(missing)} in forbidden_modules"
            assert forbidden <= modules, forbidden - modules
            checked.add(source)
    assert checked == set(MAY_IMPORT)


def test_a_back_edge_breaks_a_contract(tmp_path):
    """A copy of kree whose store imports the supervisor: lint-imports says so."""
    copy = tmp_path / "kree"
    shutil.copytree(REPO / "kree", copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "store" / "cache.py", "a") as f:
        f.write("\nfrom kree import supervisor  # noqa\n")
    result = lint(CONTRACTS, tmp_path, PYTHONPATH=str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Contracts: 8 kept, 1 broken." in result.stdout, result.stdout
    assert "kree.store.cache -> kree.supervisor" in result.stdout
