"""
Configuration: a TOML file parsed, validated and frozen.

Every key has a default, so no file at all gives the embedded setup: a state
directory C{./kree-state} (or C{$KREE_STATE_DIR}), SQLite inside it, HTTPS on
127.0.0.1:8443.  C{etc/kree.toml} documents every key.

Configuration is data: nothing in the file is executed.  All problems (unknown
sections or keys, wrong types, bad values) are collected and reported at once
in one L{ConfigError}.

Precedence for the state directory: the C{--state-dir} flag, then
C{state_dir} in the file, then C{$KREE_STATE_DIR}, then C{./kree-state}.
Relative paths in a file are relative to the file's directory.
"""

import os
import tomllib
import typing
from pathlib import Path

import attrs

from kree.errors import ConfigError

DEFAULT_STATE_DIR = "kree-state"


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
class SlurmConfig:
    # Hand jobs to Slurm (resources.backend = "slurm", or default_backend).
    enabled: bool = False
    # Where Slurm jobs' directories go: a path every compute node sees at the
    # same place.  Empty: <state-dir>/jobs (enough for a single node).
    job_root: str = ""
    # The Python on the compute nodes that has kree installed; empty: kreed's own.
    python: str = ""
    # Partition for jobs that name none; empty: the cluster's default.
    partition: str = ""
    # Directory of sbatch, squeue, scontrol, scancel and sacct; empty: PATH.
    bin_dir: str = ""
    # Seconds between the one squeue call that observes every KREE job.
    poll_seconds: float = 2.0
    # Seconds between reads of running jobs' events files.
    events_poll_seconds: float = 0.5
    # "suspend": scontrol suspend/resume (needs a Slurm operator or admin);
    # "signal": scancel --signal=STOP/CONT to the job's processes.
    pause_method: str = "suspend"
    # KREE jobs handed to Slurm at once (pending or running).
    max_jobs: int = 1000
    # More sbatch arguments for every job, e.g. ["--account=physics"].
    sbatch_args: list[str] = attrs.field(factory=list)
    # Seconds to wait for one Slurm command before taking it as failed.
    command_timeout_seconds: float = 30.0


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
    "slurm": SlurmConfig,
    "validation": ValidationConfig,
    "log": LogConfig,
}

_POSITIVE = {("supervisor", "monitor_interval_seconds"), ("server", "max_body_bytes"),
             ("server", "idle_timeout_seconds"), ("server", "request_head_timeout_seconds"),
             ("supervisor", "default_walltime_seconds"), ("supervisor", "max_walltime_seconds"),
             ("events", "timeout_seconds"), ("events", "max_in_flight"),
             ("events", "failing_after"), ("slurm", "poll_seconds"),
             ("slurm", "events_poll_seconds"), ("slurm", "max_jobs"),
             ("slurm", "command_timeout_seconds")}
_POSITIVE |= {("validation", "timeout_seconds"), ("validation", "max_memory_bytes"),
              ("validation", "max_concurrent")}

_CHOICES = {
    ("store", "sqlite_synchronous"): ("normal", "full"),
    ("supervisor", "default_backend"): ("local", "slurm"),
    ("slurm", "pause_method"): ("suspend", "signal"),
    ("log", "format"): ("auto", "text", "json"),
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
    slurm: SlurmConfig = SlurmConfig()
    validation: ValidationConfig = ValidationConfig()
    log: LogConfig = LogConfig()
    # The file this came from, if any.
    source: Path | None = None

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
    def backends(self) -> tuple[str, ...]:
        """The execution backends this server offers."""
        return ("local", "slurm") if self.slurm.enabled else ("local",)

    def job_root(self, backend: str) -> Path:
        """Where the directories of jobs on C{backend} go."""
        if backend == "slurm" and self.slurm.job_root:
            return Path(self.slurm.job_root)
        return self.jobs_dir

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

    sections = {}
    for key, value in data.items():
        if key == "state_dir":
            if not isinstance(value, str) or not value:
                problems.append("state_dir: must be a non-empty string")
            continue
        if key not in _SECTIONS:
            problems.append(f"unknown section or key {key!r}")
            continue
        if not isinstance(value, dict):
            problems.append(f"[{key}] must be a table")
            continue
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
    if "fetch" in sections:
        sections["fetch"] = attrs.evolve(
            sections["fetch"],
            file_roots=[str(base / root) for root in sections["fetch"].file_roots],
        )

    if "slurm" in sections:
        slurm = sections["slurm"]
        sections["slurm"] = attrs.evolve(slurm, **{
            name: str(base / getattr(slurm, name))
            for name in ("job_root", "bin_dir") if getattr(slurm, name)})
    supervisor = sections.get("supervisor", SupervisorConfig())
    if supervisor.max_walltime_seconds > 366 * 24 * 3600:
        problems.append("supervisor.max_walltime_seconds: at most a year (31622400)")
    if supervisor.default_walltime_seconds > supervisor.max_walltime_seconds:
        problems.append("supervisor.default_walltime_seconds: must not exceed "
                        f"max_walltime_seconds ({supervisor.max_walltime_seconds})")
    default_backend = sections.get("supervisor", SupervisorConfig()).default_backend
    if default_backend == "slurm" and not sections.get("slurm", SlurmConfig()).enabled:
        problems.append('supervisor.default_backend: "slurm" needs [slurm] enabled = true')

    if problems:
        raise ConfigError(problems)
    return Config(state_dir=chosen.absolute(), source=source, **sections)


def _section(name: str, cls: type, values: dict, problems: list[str]):
    fields = {f.name: f for f in attrs.fields(cls)}
    accepted = {}
    for key, value in values.items():
        field = fields.get(key)
        if field is None:
            problems.append(f"[{name}] unknown key {key!r} (known: {', '.join(fields)})")
            continue
        error = _type_error(value, field.type)
        if error:
            problems.append(f"{name}.{key}: {error}")
            continue
        if field.type is float:
            value = float(value)
        choices = _CHOICES.get((name, key))
        if choices and value not in choices:
            problems.append(f"{name}.{key}: must be one of {', '.join(choices)}, not {value!r}")
            continue
        if field.type in (int, float) and value < 0:
            problems.append(f"{name}.{key}: must not be negative")
            continue
        if (name, key) in _POSITIVE and value <= 0:
            problems.append(f"{name}.{key}: must be greater than 0")
            continue
        accepted[key] = value
    return cls(**accepted)


def _type_error(value, expected) -> str | None:
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
