"""
Configuration: a TOML file parsed, validated and frozen.

Every key has a default, so no file at all gives the embedded setup: a state
directory C{./kree-state} (or C{$KREE_STATE_DIR}), SQLite inside it, HTTPS on
127.0.0.1:8443.  C{etc/kree.toml} documents every key.

Configuration is data: nothing in the file is executed.  All problems (unknown
sections or keys, wrong types, bad values) are collected and reported at once
in one L{ConfigError}.

Execution backends are configured under C{[backends.<name>]}: the sections
of the backends installed (L{kree.backends.registry}), each checked against
its class's C{config_type}; a backend's old top-level section (C{[slurm]})
is still read, with a warning.

Precedence for the state directory: the C{--state-dir} flag, then
C{state_dir} in the file, then C{$KREE_STATE_DIR}, then C{./kree-state}.
Relative paths in a file are relative to the file's directory.
"""

import os
import tomllib
import typing
from pathlib import Path

import attrs
from twisted.logger import Logger

from kree.backends import registry
from kree.errors import ConfigError

DEFAULT_STATE_DIR = "kree-state"
log = Logger()


@attrs.frozen
class ServerConfig:
    listen: str = "127.0.0.1:8443"
    # Request bodies larger than this are refused with 413.
    max_body_bytes: int = 1_048_576
    # A connection with no byte in either direction for this long is closed.
    idle_timeout_seconds: float = 60.0
    # The request line and headers must arrive within this many seconds of
    # their first byte (else 408); a trickling client cannot hold a connection.
    request_head_timeout_seconds: float = 20.0


@attrs.frozen
class TLSConfig:
    # Empty means the file of that name under <state-dir>/certs/.
    ca: str = ""
    cert: str = ""
    key: str = ""
    crl: str = ""


@attrs.frozen
class StoreConfig:
    # Empty means sqlite:///<state-dir>/kree.db.
    url: str = ""
    # SQLite only.  "normal": in WAL mode a commit survives a crash of the
    # process but the last commits may be lost on power loss; about five
    # times faster than "full", which also survives power loss (measured:
    # 12k vs 2.4k commits/s on this machine kind).  KREE's default is
    # "full": job records and pending deliveries are promises to frontends.
    sqlite_synchronous: str = "full"
    # Threads for PostgreSQL (SQLite always gets exactly one).
    pool_size: int = 4
    # PostgreSQL: how long the daemon's transactions wait for a server that is
    # out of reach (a restart, a failover) before they fail; an API request
    # then answers 503.  0: fail at once.
    reconnect_seconds: float = 10.0


@attrs.frozen
class FetchConfig:
    allowed_hosts: list[str] = attrs.field(factory=lambda: ["*"])
    allow_private_addresses: bool = False
    file_roots: list[str] = attrs.field(factory=list)
    max_bytes: int = 104_857_600
    timeout_seconds: float = 60.0
    # Reuse a cached http(s) document this long without revalidating it;
    # 0 (the default): every job sends a conditional request.
    freshness_seconds: float = 0.0


@attrs.frozen
class SupervisorConfig:
    # 0 = the number of cores.
    max_running: int = 0
    # Engines one frontend may run at once; 0 = no limit of its own.
    max_running_per_frontend: int = 0
    stop_grace_seconds: float = 10.0
    # How often CPU, memory and the walltime/memory limits are checked.
    monitor_interval_seconds: float = 2.0
    default_backend: str = "local"
    # A job that names no walltime gets this one, so no run is without an
    # end (an SDF model without iterations runs for ever); a job may ask for
    # at most max_walltime_seconds (422 beyond).
    default_walltime_seconds: int = 86400
    max_walltime_seconds: int = 1209600


@attrs.frozen
class EventsConfig:
    # Seconds before each retry of a failed delivery; after the last, the
    # delivery is given up.  The default reaches about a day (~1.9 days in all).
    retry_schedule_seconds: list[float] = attrs.field(
        factory=lambda: [10.0, 60.0, 300.0, 1800.0, 7200.0, 21600.0, 43200.0, 86400.0])
    # Consecutive failures after which a subscription is shown as failing.
    failing_after: int = 5
    timeout_seconds: float = 10.0
    # Deliveries in flight at once (each subscription has at most one).
    max_in_flight: int = 16
    # PEM CA for https listeners; empty: the system's trust store.
    ca: str = ""
    # KREE's own client certificate for listeners that want mutual TLS.
    client_cert: str = ""
    client_key: str = ""


@attrs.frozen
class ValidationConfig:
    # Checking a workflow (the engine's validate, before a job is created and
    # for feasibility): seconds one check may take before it is killed
    # (422 workflow_check_failed, details.limit = "time").
    timeout_seconds: float = 10.0
    # Bytes of memory one check may use (422 workflow_check_failed,
    # details.limit = "memory").
    max_memory_bytes: int = 536_870_912
    # Checks running at once; a request that needs one more is answered
    # 503 busy with Retry-After.
    max_concurrent: int = 2


@attrs.frozen
class SandboxConfig:
    # "landlock": every engine and everything it starts is contained
    # (kree.engine.sandbox: read-only system, read-write job directory, no
    # network, limits, an unprivileged account); kreed refuses to start where
    # the kernel lacks Landlock.  "none": nothing is contained (say so only
    # where every workflow is trusted).
    mode: str = "landlock"
    # When kreed runs as root, engines run as this account, never as root.
    # A dedicated one is better than the shared nobody:
    #   useradd --system --no-create-home --shell /usr/sbin/nologin kree-engine
    user: str = "nobody"
    # More files or directories engines may read (software outside /usr and
    # /opt); never the state directory, which stays out of sight.
    read_paths: list[str] = attrs.field(factory=list)
    # Frontends whose jobs may have network (resources.network = true).
    network_frontends: list[str] = attrs.field(factory=list)
    # Per process of a job: CPU seconds (0: no limit), data memory when
    # the job names no memory (0: no limit), file size; and processes of
    # the engine account.  A job may ask for less, not more (422).
    cpu_seconds: int = 0
    memory_bytes: int = 0
    max_processes: int = 512
    max_file_bytes: int = 17_179_869_184


@attrs.frozen
class ParametersConfig:
    # Per actor class, the attributes frontends may not set (a parameter
    # that names one is a 422), replacing the default for that class: the
    # attributes that hold code the actor runs (RExpression's and
    # MatlabExpression's expression, PythonScript's script, ExternalExecution's
    # command and environment).  [] lets frontends set every one.
    locked: dict[str, list[str]] = attrs.field(factory=dict)


@attrs.frozen
class LogConfig:
    # "auto": text on a terminal, JSON lines otherwise.
    format: str = "auto"
    level: str = "info"


_SECTIONS = {
    "server": ServerConfig,
    "tls": TLSConfig,
    "store": StoreConfig,
    "fetch": FetchConfig,
    "supervisor": SupervisorConfig,
    "events": EventsConfig,
    "validation": ValidationConfig,
    "sandbox": SandboxConfig,
    "parameters": ParametersConfig,
    "log": LogConfig,
}

_POSITIVE = {("supervisor", "monitor_interval_seconds"), ("server", "max_body_bytes"),
             ("server", "idle_timeout_seconds"), ("server", "request_head_timeout_seconds"),
             ("supervisor", "default_walltime_seconds"), ("supervisor", "max_walltime_seconds"),
             ("events", "timeout_seconds"), ("events", "max_in_flight"),
             ("events", "failing_after")}
_POSITIVE |= {("validation", "timeout_seconds"), ("validation", "max_memory_bytes"),
              ("validation", "max_concurrent"), ("sandbox", "max_processes"),
              ("sandbox", "max_file_bytes")}

_CHOICES = {
    ("store", "sqlite_synchronous"): ("normal", "full"),
    ("log", "format"): ("auto", "text", "json"),
    ("sandbox", "mode"): ("landlock", "none"),
    ("log", "level"): ("debug", "info", "warn", "error"),
}


@attrs.frozen
class Config:
    state_dir: Path
    server: ServerConfig = ServerConfig()
    tls: TLSConfig = TLSConfig()
    store: StoreConfig = StoreConfig()
    fetch: FetchConfig = FetchConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    events: EventsConfig = EventsConfig()
    validation: ValidationConfig = ValidationConfig()
    sandbox: SandboxConfig = SandboxConfig()
    parameters: ParametersConfig = ParametersConfig()
    log: LogConfig = LogConfig()
    # The file this came from, if any.
    source: Path | None = None
    # Every installed backend's [backends.<name>] settings (its config_type),
    # by name, in the registry's order; defaults where the file has none.
    backend_settings: dict[str, typing.Any] = attrs.field(
        factory=lambda: {name: cls.config_type() for name, cls in registry.installed().items()})
    # The execution backends this server offers (the enabled ones).
    backends: tuple[str, ...] = attrs.field(
        default=attrs.Factory(lambda self: _enabled(self.backend_settings), takes_self=True))

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.state_dir / 'kree.db'}"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "kreed.pid"

    @property
    def admin_socket(self) -> Path:
        return self.state_dir / "admin.sock"

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"

    @property
    def installed_backends(self) -> tuple[str, ...]:
        """Every backend installed, offered or not."""
        return tuple(self.backend_settings)

    def job_root(self, backend: str) -> Path:
        """Where the directories of jobs on C{backend} go."""
        return registry.job_root(self.backend_settings.get(backend), self.jobs_dir)

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def certs_dir(self) -> Path:
        return self.state_dir / "certs"

    def tls_path(self, which: str) -> Path | None:
        """The configured TLS file C{which} (ca, cert, key, crl), or its default."""
        value = getattr(self.tls, which)
        if value:
            return Path(value)
        defaults = {"ca": "ca.pem", "cert": "server.pem", "key": "server.key"}
        return self.certs_dir / defaults[which] if which in defaults else None

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return parse_listen(self.server.listen)


def parse_listen(value: str) -> tuple[str, int]:
    """C{"HOST:PORT"} (C{"[::1]:PORT"} for IPv6) to a pair; raises ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"listen address {value!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {value!r} has no valid port")
    return host, int(port)


def load_config(
    path: str | os.PathLike | None = None,
    *,
    state_dir: str | os.PathLike | None = None,
    listen: str | None = None,
    environ: typing.Mapping[str, str] = os.environ,
) -> Config:
    """
    Read, validate and freeze the configuration.

    @param path: a TOML file, or None for the embedded defaults.
    @param state_dir: the C{--state-dir} flag, which wins over the file.
    @param listen: the C{--listen} flag, which wins over the file.
    @raise ConfigError: with every problem found.
    """
    problems: list[str] = []
    data: dict = {}
    base = Path.cwd()
    source = None
    if path is not None:
        source = Path(path).absolute()
        base = source.parent
        try:
            with open(source, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError([f"{path}: not valid TOML: {e}"]) from None

    classes = registry.installed(problems)
    old_sections = {cls.old_section: name for name, cls in classes.items()
                    if cls.old_section and cls.old_section not in _SECTIONS}
    sections = {}
    backend_tables: dict[str, tuple[str, dict]] = {}  # name -> (as written, table)
    for key, value in data.items():
        if key == "state_dir":
            if not isinstance(value, str) or not value:
                problems.append("state_dir: must be a non-empty string")
            continue
        if key not in _SECTIONS and key not in old_sections and key != "backends":
            problems.append(f"unknown section or key {key!r}")
            continue
        if not isinstance(value, dict):
            problems.append(f"[{key}] must be a table")
            continue
        if key == "backends":
            for name, table in value.items():
                if name not in classes:
                    problems.append(f"[backends.{name}]: no backend {name!r} is installed "
                                    f"(installed: {', '.join(classes) or 'none'})")
                elif not isinstance(table, dict):
                    problems.append(f"[backends.{name}] must be a table")
                else:
                    backend_tables[name] = (f"backends.{name}", table)
        elif key in old_sections:
            name = old_sections[key]
            if isinstance(data.get("backends"), dict) and name in data["backends"]:
                problems.append(f"[{key}] and [backends.{name}] are both given: [{key}] is the "
                                f"old name of [backends.{name}]; keep only that one")
                continue
            log.warn("configuration: [{old}] is deprecated; call it [backends.{name}]",
                     old=key, name=name)
            backend_tables[name] = (key, value)
        else:
            sections[key] = _section(key, _SECTIONS[key], value, problems)

    if listen is not None:
        sections["server"] = attrs.evolve(sections.get("server", ServerConfig()), listen=listen)
    server = sections.get("server", ServerConfig())
    try:
        parse_listen(server.listen)
    except ValueError as e:
        problems.append(f"server.listen: {e}")

    if state_dir is not None:
        chosen = Path(state_dir)
    elif isinstance(data.get("state_dir"), str) and data["state_dir"]:
        chosen = base / data["state_dir"]
    elif environ.get("KREE_STATE_DIR"):
        chosen = Path(environ["KREE_STATE_DIR"])
    else:
        chosen = Path(DEFAULT_STATE_DIR)

    if "tls" in sections:
        tls = sections["tls"]
        sections["tls"] = TLSConfig(
            **{
                name: str(base / value) if value else ""
                for name, value in attrs.asdict(tls).items()
            }
        )
    if "events" in sections:
        sections["events"] = attrs.evolve(sections["events"], **{
            name: str(base / getattr(sections["events"], name))
            for name in ("ca", "client_cert", "client_key") if getattr(sections["events"], name)})
    if "sandbox" in sections:
        sections["sandbox"] = attrs.evolve(
            sections["sandbox"],
            read_paths=[str(base / path) for path in sections["sandbox"].read_paths])
    if "fetch" in sections:
        sections["fetch"] = attrs.evolve(
            sections["fetch"],
            file_roots=[str(base / root) for root in sections["fetch"].file_roots],
        )

    backend_settings = {}
    for name, cls in classes.items():
        if name in backend_tables:
            label, table = backend_tables[name]
            settings = _section(label, cls.config_type, table, problems)
        else:
            settings = cls.config_type()
        backend_settings[name] = attrs.evolve(settings, **{
            field.name: str(base / getattr(settings, field.name))
            for field in attrs.fields(type(settings))
            if field.metadata.get("path") and getattr(settings, field.name)})
    enabled = _enabled(backend_settings, classes)
    supervisor = sections.get("supervisor", SupervisorConfig())
    if supervisor.max_walltime_seconds > 366 * 24 * 3600:
        problems.append("supervisor.max_walltime_seconds: at most a year (31622400)")
    if supervisor.default_walltime_seconds > supervisor.max_walltime_seconds:
        problems.append("supervisor.default_walltime_seconds: must not exceed "
                        f"max_walltime_seconds ({supervisor.max_walltime_seconds})")
    default_backend = supervisor.default_backend
    if not classes:
        problems.append(f"no execution backend is installed (entry point group "
                        f"{registry.GROUP}): install kree again (pip install -e .)")
    elif default_backend not in enabled and default_backend in classes:
        problems.append(f'supervisor.default_backend: "{default_backend}" needs '
                        f'[backends.{default_backend}] enabled = true')
    elif default_backend not in enabled:
        problems.append(f'supervisor.default_backend: no backend "{default_backend}" is '
                        f'installed (installed: {", ".join(classes) or "none"})')

    if problems:
        raise ConfigError(problems)
    return Config(state_dir=chosen.absolute(), source=source, backend_settings=backend_settings,
                  backends=enabled, **sections)


def _enabled(backend_settings: dict[str, typing.Any],
             classes: dict[str, type] | None = None) -> tuple[str, ...]:
    """The names of the backends these settings enable."""
    classes = registry.installed() if classes is None else classes
    return tuple(name for name, settings in backend_settings.items()
                 if name in classes and registry.is_enabled(classes[name], settings))


def _section(name: str, cls: type, values: dict, problems: list[str]):
    # A backend's settings class may be written with postponed annotations.
    fields = {f.name: f for f in attrs.fields(attrs.resolve_types(cls))}
    accepted = {}
    for key, value in values.items():
        field = fields.get(key)
        if field is None:
            known = f"known: {', '.join(fields)}" if fields else "it has no keys"
            problems.append(f"[{name}] unknown key {key!r} ({known})")
            continue
        error = _type_error(value, field.type)
        if error:
            problems.append(f"{name}.{key}: {error}")
            continue
        if field.type is float:
            value = float(value)
        choices = _CHOICES.get((name, key)) or field.metadata.get("choices")
        if choices and value not in choices:
            problems.append(f"{name}.{key}: must be one of {', '.join(choices)}, not {value!r}")
            continue
        if field.type in (int, float) and value < 0:
            problems.append(f"{name}.{key}: must not be negative")
            continue
        if ((name, key) in _POSITIVE or field.metadata.get("positive")) and value <= 0:
            problems.append(f"{name}.{key}: must be greater than 0")
            continue
        accepted[key] = value
    return cls(**accepted)


def _type_error(value, expected) -> str | None:
    if typing.get_origin(expected) is dict:
        key_type, item_type = typing.get_args(expected)
        if not isinstance(value, dict) or any(_type_error(v, item_type) for v in value.values()):
            inner = typing.get_args(item_type)
            what = f"a list of {inner[0].__name__}" if inner else item_type.__name__
            return f"must be a table of {what}"
        return None
    if typing.get_origin(expected) is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, list) or any(_type_error(v, item_type) for v in value):
            return f"must be a list of {item_type.__name__}"
        return None
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    return None if ok else f"must be {expected.__name__}, not {type(value).__name__}"
