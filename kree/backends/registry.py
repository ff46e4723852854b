"""
The installed backends: found through the entry point group C{kree.backends},
configured under C{[backends.<name>]}, built for the supervisor.

A backend is a plug-in like any other package's: its distribution declares

    [kree.backends]
    <name> = <module>:<Backend subclass>

and this module knows nothing of any one of them.  kree.config asks
L{installed} which sections may exist and how each is checked (the class's
C{config_type}); the supervisor asks L{build_backends} for the enabled ones.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from kree.backends import Backend, EngineObserver
from kree.errors import ConfigError

GROUP = "kree.backends"


def installed(problems: list[str] | None = None) -> dict[str, type[Backend]]:
    """
    Every installed backend class by name: those always enabled first, then
    the others by name (the order of C{Config.backends} and the API).

    @param problems: where to add why an entry point is left out (it cannot
        be loaded, or names no backend); without it, that is raised.
    @raise ConfigError: an entry point is left out, and C{problems} is None.
    """
    found: dict[str, type[Backend]] = {}
    left_out: list[str] = []
    for point in entry_points(group=GROUP):
        if point.name in found:
            continue  # the same distribution on sys.path twice: the first wins
        try:
            cls = point.load()
        except Exception as e:
            left_out.append(f"backend {point.name!r} ({point.value}) cannot be loaded: "
                            f"{type(e).__name__}: {e}")
            continue
        if not (isinstance(cls, type) and issubclass(cls, Backend)) or cls.name != point.name:
            left_out.append(f"backend {point.name!r} ({point.value}) is not a "
                            f"kree.backends.Backend named {point.name!r}")
            continue
        found[point.name] = cls
    if left_out and problems is None:
        raise ConfigError(left_out)
    if problems is not None:
        problems += left_out
    return dict(sorted(found.items(), key=lambda item: (not item[1].always_enabled, item[0])))


def is_enabled(cls: type[Backend], settings: Any) -> bool:
    """Whether a backend with these settings is offered."""
    return cls.always_enabled or bool(getattr(settings, "enabled", False))


def job_root(settings: Any, default: Path) -> Path:
    """Where a backend's jobs' directories go: its C{job_root}, else C{default}."""
    root = getattr(settings, "job_root", "")
    return Path(root) if root else default


def build_backends(config, reactor, observer: EngineObserver,
                   sandbox=None) -> dict[str, Backend]:
    """
    The enabled backends of C{config} (a L{kree.config.Config}), built, by
    name, in the order of C{config.backends}, their engines contained by
    C{sandbox} (a L{kree.sandbox.Sandbox}).  Each backend's C{max_jobs}
    says how many jobs it takes at once (None: C{[supervisor] max_running}).
    """
    classes = installed()
    return {name: classes[name].from_config(reactor, observer,
                                            config.backend_settings[name], config, sandbox)
            for name in config.backends}
