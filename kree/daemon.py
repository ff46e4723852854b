"""
C{kreed}: the KREE daemon's entry point.

    kreed [--config FILE] [--state-dir DIR] [--listen HOST:PORT] [--dev]
          [--stop-jobs-on-exit]

Without a configuration file it runs on embedded defaults: state directory
C{./kree-state} (or C{$KREE_STATE_DIR}), SQLite inside it, 127.0.0.1:8443.
It runs in the foreground; SIGTERM or SIGINT stop it cleanly, leaving running
engines to finish on their own (they are re-adopted at the next start) unless
--stop-jobs-on-exit is given.  Under systemd use C{etc/kreed.service}.

Exit codes: 0 clean stop, 1 failure (another kreed runs here, the database
cannot be opened, ...), 2 bad configuration, 3 database behind its
migrations (or unknown to this kreed).
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from kree import __version__
from kree.config import Config, load_config
from kree.errors import ConfigError, DatabaseBehind, DatabaseUnknown

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_DATABASE = 3

log = Logger(namespace="kreed")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kreed",
        description="KREE, the Kepler Remote Execution Engine daemon. Runs in the foreground; "
        "SIGTERM or SIGINT stop it cleanly.",
        epilog="Exit codes: 0 clean stop, 1 failure, 2 bad configuration, "
        "3 database behind its migrations (run `kree-admin db upgrade`).",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration (see etc/kree.toml)")
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="state directory (default: state_dir in the config, else $KREE_STATE_DIR, "
        "else ./kree-state)",
    )
    parser.add_argument("--listen", metavar="HOST:PORT", help="HTTPS address (default 127.0.0.1:8443)")
    parser.add_argument(
        "--dev",
        action="store_true",
        help="development mode: on first start create a CA, a server certificate for "
        "localhost and a frontend 'dev' with its certificate under <state-dir>/certs/, "
        "and print a working curl command",
    )
    parser.add_argument(
        "--stop-jobs-on-exit",
        action="store_true",
        help="on SIGTERM/SIGINT, stop running jobs (ABORTED) instead of leaving their "
        "engines running for the next start to re-adopt",
    )
    parser.add_argument("--version", action="version", version=f"kreed {__version__}")
    return parser.parse_args(argv)


def prepare_state_dir(config: Config) -> None:
    """Create the state directory and its parts, private to this user."""
    for path in (config.state_dir, config.jobs_dir, config.cache_dir, config.logs_dir,
                 config.certs_dir, *(config.job_root(b) for b in config.backends)):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)


class AlreadyRunning(Exception):
    pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


def claim_pid_file(path: Path) -> None:
    """
    Write our pid to C{path}, refusing if a live process holds it.  A pid
    file left by a crashed kreed (its process gone) is taken over.
    """
    try:
        old = int(path.read_text().strip() or 0)
    except FileNotFoundError:
        old = 0
    except ValueError:
        old = 0
    if old and old != os.getpid() and _pid_alive(old):
        raise AlreadyRunning(f"another kreed (pid {old}) uses this state directory ({path})")
    tmp = path.with_suffix(".pid.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


def release_pid_file(path: Path) -> None:
    try:
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def dev_curl_command(config: Config, url: str) -> str:
    from kree.credentials import DEV_FRONTEND, frontend_paths

    cert, key = frontend_paths(config, DEV_FRONTEND)
    return (
        f"curl --cacert {config.tls_path('ca')} --cert {cert} --key {key} "
        f"{url.replace('127.0.0.1', 'localhost')}/v1/service-info"
    )


def run(config: Config, reactor, *, dev: bool = False, stop_jobs_on_exit: bool = False) -> int:
    """Run the daemon until it is told to stop; the exit code."""
    from kree.service import KreeDaemon

    daemon = KreeDaemon(config, reactor, dev=dev, stop_jobs_on_exit=stop_jobs_on_exit)
    outcome = {"code": EXIT_OK}

    def fail(code: int, message: str) -> None:
        outcome["code"] = code
        print(f"kreed: {message}", file=sys.stderr, flush=True)
        reactor.stop()

    async def start() -> None:
        try:
            await daemon.startService()
        except (DatabaseBehind, DatabaseUnknown) as e:
            log.critical("refusing to start: {message}", message=e.message)
            fail(EXIT_DATABASE, e.message)
        except ConfigError as e:
            log.critical("refusing to start: {message}", message=e.message)
            fail(EXIT_CONFIG, e.message)
        except Exception as e:
            log.failure("kreed failed to start")
            fail(EXIT_FAILURE, f"failed to start: {e}")
        else:
            log.info(
                "kreed {version} running (pid {pid}); store {url}",
                version=__version__,
                pid=os.getpid(),
                url=daemon.store.url,
            )
            if dev:
                print(f"kreed --dev: try\n  {dev_curl_command(config, daemon.api.url)}", flush=True)

    def stop() -> Deferred:
        log.info("kreed stopping")
        return daemon.stopService()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(start()))
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return outcome["code"]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The state directory holds private keys and the job database.
    os.umask(0o077)
    try:
        config = load_config(args.config, state_dir=args.state_dir, listen=args.listen)
    except ConfigError as e:
        print(f"kreed: {e.message}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    try:
        prepare_state_dir(config)
    except OSError as e:
        print(f"kreed: cannot use state directory {config.state_dir}: {e}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    try:
        claim_pid_file(config.pid_file)
    except AlreadyRunning as e:
        print(f"kreed: {e}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)

    from kree.logs import begin_logging

    logfile = begin_logging(config.logs_dir, config.log.format, config.log.level)
    from twisted.internet import reactor

    # SIGINT stops kreed as SIGTERM does, even when it was started with SIGINT
    # ignored (as a shell without job control starts commands run with &):
    # Twisted takes over SIGINT only while it has Python's default handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = run(config, reactor, dev=args.dev, stop_jobs_on_exit=args.stop_jobs_on_exit)
    finally:
        release_pid_file(config.pid_file)
        logfile.close()
    sys.exit(code)
