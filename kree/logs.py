"""
Starting twisted.logger for the daemon.

Two observers: standard error (text on a terminal, JSON lines otherwise, so
journald and log shippers get structured fields) and
<state-dir>/logs/kreed.log (always JSON lines, one object per line).
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
    textFileLogObserver,
)
from zope.interface import implementer

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    One compact JSON object per line: time, level, namespace, the formatted
    message, then the event's own fields (job_id, frontend, pid, ...).
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: dict) -> None:
        record = {
            "time": datetime.datetime.fromtimestamp(
                event.get("log_time", 0), datetime.timezone.utc
            ).isoformat(timespec="milliseconds"),
            "level": event["log_level"].name if "log_level" in event else "info",
            "namespace": event.get("log_namespace"),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if not key.startswith("log_") and key not in record:
                record[key] = value
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        self._stream.write(json.dumps(record, default=repr) + "\n")
        self._stream.flush()


def _filtered(observer, level: str):
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])
    return FilteringLogObserver(observer, [predicate])


def stderr_observer(fmt: str, stream: IO[str] = sys.stderr):
    as_text = fmt == "text" or (fmt == "auto" and stream.isatty())
    if as_text:
        return textFileLogObserver(stream)
    return JSONLinesObserver(stream)


def begin_logging(logs_dir: Path, fmt: str = "auto", level: str = "info") -> IO[str]:
    """Start logging; returns the log file, for the caller to close at exit."""
    logfile = open(logs_dir / "kreed.log", "a", encoding="utf-8", buffering=1)
    observers = [
        _filtered(stderr_observer(fmt), level),
        _filtered(JSONLinesObserver(logfile), level),
    ]
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)
    return logfile
