"""Configuration: one frozen, validated dataclass.

Precedence, highest first: explicit values (CLI flags) > environment
variables > a ``.env`` file > the defaults below. Every setting has an
environment variable ``TQ_<FIELD>`` (upper case), e.g. ``TQ_WORKERS=8``.
``.env`` is read with python-dotenv when it is installed and with a small
``KEY=VALUE`` parser otherwise; it never modifies ``os.environ``.

An invalid value raises :class:`~taskqueue.errors.ConfigError` naming the
setting, where it came from, and the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

from .errors import ConfigError
from .processor import DEFAULT_MAX_IMAGE_PIXELS, FaultConfig

ENV_PREFIX = "TQ_"
METRICS_HOST = "127.0.0.1"
METRICS_INTERVAL_S = 10.0
MIN_METRICS_INTERVAL_S = 0.01  # below, the writer would rewrite the file flat out
MIN_LEASE_S = 1.0  # renewed every lease_s/3: shorter, a busy process's live tasks are taken over and run twice
FLAG_NAMES = {"shutdown_grace_s": "--grace", "metrics_interval_s": "--metrics-interval"}  # not --<name>

# Upper bounds: a value past them would not be a tuning choice but a crash or a hang at run time.
# Every duration setting in seconds is at most MAX_DURATION_S, 30 days. Each ends up as the timeout of a
# threading wait (Event.wait, Condition.wait, Lock.acquire) in some thread, and one above
# threading.TIMEOUT_MAX raises OverflowError there, killing a background thread: TIMEOUT_MAX is about
# 9.2e9 s on Linux and macOS but only 4294967 s (0xFFFFFFFF ms, ~49.7 days) on Windows, where the wait
# is a DWORD of milliseconds. 30 days stays below it on every platform, with room to spare.
MAX_DURATION_S = 30 * 24 * 3600  # 2592000
# The most worker threads: each is an OS thread with its own stack; tens of thousands fail to start
# (RuntimeError) part-way, with the threads already started left running.
MAX_WORKERS = 1024
# The largest queue: metrics preallocate two depth histograms of queue_size + 1 counters (8-byte
# pointers: 16 MB at this bound), and a full queue holds that many tasks in memory.
MAX_QUEUE_SIZE = 1_000_000
# The largest object store read: every read allocates a buffer of this size; 64 MiB, the default
# max_task_file_bytes, is far past any throughput gain.
MAX_CHUNK_SIZE = 64 * 1024 * 1024
# SQLite's busy timeout is a C int of milliseconds (~24.8 days): above it SQLite silently uses 0, no wait.
MAX_BUSY_TIMEOUT_MS = 2 ** 31 - 1
# Measured (README, "The commit path"): lingering under load took io@100 from 2.4 to 5.6 ops per commit
# and the engine's CPU per task down 4-7 %. 2 ms, not 5: the same at io@100 (723 vs 714 tasks/s, 6
# interleaved pairs), better at 5 ms tasks in the harness (0.99x the pool instead of 0.98x, p95 1.01x
# instead of 1.04x): each commit wakes fewer clients at once, whose Python the workers then wait behind.
COMMIT_LINGER_S = 0.002
MAX_COMMIT_LINGER_S = 0.1


def _unset(value: Any) -> bool:
    """An optional setting left unset: None, or an empty or "none" string (from a variable or .env)."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none"))


def _positive_int(value: Any) -> int:
    value = _integer(value)
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _positive_int_at_most(high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        value = _positive_int(value)
        if value > high:
            raise ValueError(f"must be at most {high}")
        return value
    return parse


def _bound(x: float) -> str:
    """A bound as written in a message: 3600, 2592000, 0.5, inf (no exponent for whole numbers)."""
    return format(x, ".15g")


def _number(low: float, high: float = math.inf, *, low_open: bool = False,
            optional: bool = False) -> Callable[[Any], float | None]:
    def parse(value: Any) -> float | None:
        if optional and _unset(value):
            return None
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError("must be a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError("must be a finite number")
        if value < low or (low_open and value == low) or value > high:
            bounds = f"{'(' if low_open else '['}{_bound(low)}, {_bound(high)}]"
            raise ValueError(f"must be within {bounds}")
        return float(value)
    return parse


def _duration(*, low_open: bool = False, optional: bool = False) -> Callable[[Any], float | None]:
    """A duration in seconds, within [0, MAX_DURATION_S] (or (0, MAX_DURATION_S])."""
    return _number(0.0, MAX_DURATION_S, low_open=low_open, optional=optional)


def _choice(*options: str, optional: bool = False) -> Callable[[Any], str | None]:
    def parse(value: Any) -> str | None:
        if optional and _unset(value):
            return None
        if not isinstance(value, str) or value.strip().lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value.strip().lower()
    return parse


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _integer(value: Any) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError("must be an integer") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


def _port(value: Any) -> int | None:
    if _unset(value):
        return None
    value = _integer(value)
    if not 0 <= value <= 65535:
        raise ValueError("must be within [0, 65535] (0: any free port)")
    return value


def _host(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() or c == "\0" for c in value):
        raise ValueError("must be a host name or address")
    return value


def _setting(default: Any, parse: Callable[[Any], Any], doc: str) -> Any:
    return dataclasses.field(default=default, metadata={"parse": parse, "doc": doc})


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ValueError("must be a non-empty path")
    return value


def _optional_path(value: Any) -> str | None:
    return None if _unset(value) else _path(value)


@dataclass(frozen=True, kw_only=True)
class Config:
    """Every tunable of the queue, validated on construction (keyword-only)."""

    db: str = _setting("tasks.db", _path, "the task rows: a SQLite file, or a postgresql:// URL")
    store: str = _setting("store", _path, "object store root directory (sources and variants)")
    workers: int = _setting(8, _positive_int_at_most(MAX_WORKERS), f"worker threads (at most {MAX_WORKERS})")
    queue_size: int = _setting(128, _positive_int_at_most(MAX_QUEUE_SIZE),
                                f"capacity of the bounded queue (at most {MAX_QUEUE_SIZE})")
    on_full: str = _setting("block", _choice("block", "reject"),
                            "when the queue is full: block the producer, or reject with QueueFull")
    put_timeout_s: float | None = _setting(None, _duration(low_open=True, optional=True),
                                           "block mode: give up with QueueFull after this many seconds "
                                           "(none: wait)")
    max_attempts: int = _setting(3, _positive_int, "attempts before a task is dead-lettered")
    retry_base_s: float = _setting(0.1, _duration(), "backoff base in seconds: delay <= base * 2**(attempt-1)")
    retry_cap_s: float = _setting(10.0, _duration(), "backoff cap in seconds")
    lease_s: float = _setting(300.0, _number(MIN_LEASE_S, MAX_DURATION_S),
                              "how many seconds a claim lasts unless its process renews it (every lease_s/3; "
                              "at least 1: a busy process cannot promise to renew more often)")
    db_synchronous: str = _setting("normal", _choice("normal", "full"), "SQLite synchronous pragma")
    busy_timeout_ms: int = _setting(10000, _positive_int_at_most(MAX_BUSY_TIMEOUT_MS),
                                    f"SQLite busy timeout in milliseconds (at most {MAX_BUSY_TIMEOUT_MS}); "
                                    "on PostgreSQL, how long status and dlq list wait for a lock")
    commit_linger_s: float = _setting(COMMIT_LINGER_S, _number(0.0, MAX_COMMIT_LINGER_S),
                                      "under load (every worker has a task waiting), how long the store's "
                                      "writer may wait for more changes to share one commit, in seconds "
                                      f"(0: never; at most {MAX_COMMIT_LINGER_S:g})")
    chunk_size: int = _setting(64 * 1024, _positive_int_at_most(MAX_CHUNK_SIZE),
                               f"object store read chunk in bytes (at most {MAX_CHUNK_SIZE})")
    fsync_outputs: bool = _setting(True, _boolean, "fsync each output and its directory")
    shutdown_grace_s: float = _setting(30.0, _duration(), "seconds in-flight tasks get on SIGINT/SIGTERM")
    max_task_file_bytes: int = _setting(64 * 1024 * 1024, _positive_int, "largest task file accepted")
    max_image_pixels: int = _setting(DEFAULT_MAX_IMAGE_PIXELS, _positive_int,
                                     "largest source image accepted, width x height, read from its header "
                                     "before decoding (larger: ImageTooLarge)")
    retry_seed: int | None = _setting(None, lambda v: None if _unset(v) else _integer(v),
                                      "seed of the backoff jitter (none: random)")
    fault_latency_s: float = _setting(0.0, _number(0.0, 3600.0),
                                      "injected latency per attempt in seconds (at most 3600)")
    fault_jitter_s: float = _setting(0.0, _number(0.0, 3600.0),
                                     "injected extra latency in seconds, uniform (at most 3600)")
    fault_transient_rate: float = _setting(0.0, _number(0.0, 1.0), "injected transient error probability")
    fault_permanent_rate: float = _setting(0.0, _number(0.0, 1.0), "injected permanent error probability")
    fault_timeout_s: float | None = _setting(None, _duration(low_open=True, optional=True),
                                             "processing timeout in seconds (a transient error)")
    fault_seed: int = _setting(0, _integer, "seed of the injected faults")
    log_level: str | None = _setting(None, _choice("debug", "info", "warning", "error", optional=True),
                                     "log level (none: info with --log-file, else warnings on stderr)")
    log_file: str | None = _setting(None, _optional_path, "append JSON-lines logs here (none: warnings to stderr)")
    metrics_out: str | None = _setting(None, _optional_path,
                                       "write the metrics here as JSON, during a run and at its end")
    metrics_interval_s: float = _setting(METRICS_INTERVAL_S, _number(MIN_METRICS_INTERVAL_S, MAX_DURATION_S),
                                         "how often metrics_out is rewritten during a run (seconds)")
    metrics_port: int | None = _setting(None, _port, "serve GET /metrics and /healthz on this port while a run "
                                                     "or worker lasts (0: any free port)")
    metrics_host: str = _setting(METRICS_HOST, _host, "address the metrics port listens on")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            try:
                parsed = f.metadata["parse"](value)
            except ValueError as exc:
                raise ConfigError(f"{f.name}: {exc}, got {value!r}") from None
            object.__setattr__(self, f.name, parsed)
        _check_together(lambda name: getattr(self, name), lambda name: name)

    @property
    def faults(self) -> FaultConfig:
        return FaultConfig(latency_s=self.fault_latency_s, jitter_s=self.fault_jitter_s,
                           transient_rate=self.fault_transient_rate,
                           permanent_rate=self.fault_permanent_rate,
                           timeout_s=self.fault_timeout_s, seed=self.fault_seed)

    def replace(self, **changes: Any) -> "Config":
        new = dataclasses.replace(self, **changes)
        object.__setattr__(new, "_sources", {k: v for k, v in self._sources.items() if k not in changes})
        return new

    _sources: ClassVar[dict[str, str]] = {}  # not a field (a ClassVar): where from_env found each value
    ignored: ClassVar[tuple[tuple[str, str, str | None], ...]] = ()  # see from_env

    def given(self, name: str) -> bool:
        """Whether setting ``name`` was given (a flag, the environment, ``.env``), not left to its default."""
        return name in self._sources

    def source_of(self, name: str) -> str:
        """Where setting ``name`` came from, as messages name it: its flag, ``TQ_X (environment)`` or
        ``TQ_X (.env)`` (from :meth:`from_env`); its flag for a default or a Config built directly."""
        return self._sources.get(name) or FLAG_NAMES.get(name) or f"--{name.replace('_', '-')}"

    @classmethod
    def from_env(cls, overrides: Mapping[str, Any] | None = None, *,
                 environ: Mapping[str, str] | None = None,
                 dotenv_path: str | os.PathLike | None = ".env",
                 flags: Mapping[str, str] | None = None) -> "Config":
        """Build a Config from ``overrides`` > ``environ`` > ``dotenv_path`` > defaults.

        ``overrides`` maps field names to values; ``None`` values are ignored
        (an unset CLI flag); ``flags`` names the flag of a field whose flag is
        not ``--<field-with-dashes>``. Raises :class:`ConfigError` naming the
        variable or flag and the value. A ``TQ_*`` name in ``environ`` or the
        ``.env`` that is no setting (a misspelling) is ignored, and listed in
        :attr:`ignored` as ``(name, where, the setting it is closest to or
        None)`` for the caller to warn of (``TQ_TEST_*`` names are the tests').
        """
        environ = os.environ if environ is None else environ
        dotenv = read_dotenv(dotenv_path) if dotenv_path else {}
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]!r}")
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for f in dataclasses.fields(cls):
            env_name = ENV_PREFIX + f.name.upper()
            if f.name in overrides:
                raw = overrides[f.name]
                source = (flags or {}).get(f.name) or f"--{f.name.replace('_', '-')}"
            elif env_name in environ:
                raw, source = environ[env_name], f"{env_name} (environment)"
            elif env_name in dotenv:
                raw, source = dotenv[env_name], f"{env_name} (.env)"
            else:
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as exc:
                raise ConfigError(f"{source}: {exc}, got {raw!r}") from None
            sources[f.name] = source
        fields = {f.name: f for f in dataclasses.fields(cls)}
        _check_together(lambda name: values[name] if name in values else fields[name].default,
                        lambda name: sources.get(name, f"{name} (default)"))
        config = cls(**values)
        object.__setattr__(config, "_sources", sources)
        known = {ENV_PREFIX + name.upper() for name in names}
        found = [(name, "environment") for name in environ] + [(name, ".env") for name in dotenv]
        object.__setattr__(config, "ignored", tuple(
            (name, where, next(iter(difflib.get_close_matches(name, known, n=1)), None))
            for name, where in sorted(found)
            if name.startswith(ENV_PREFIX) and name not in known and not name.startswith(ENV_PREFIX + "TEST_")))
        return config

    @classmethod
    def dotenv_example(cls) -> str:
        """The text of ``.env.example``: every setting, its meaning and its default."""
        lines = ["# Every setting of the task queue, with its default. Copy to .env and edit.",
                 "# Precedence: command-line flags > environment variables > .env > these defaults.",
                 f"# Every duration in seconds (*_S) is at most {MAX_DURATION_S} (30 days) unless noted.", ""]
        for name, default, doc in cls.describe():
            value = "none" if default is None else str(default).lower() if isinstance(default, bool) else default
            lines += [f"# {doc}", f"{name}={value}"]
        return "\n".join(lines) + "\n"

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """(environment variable, default, meaning) for every setting, for docs and .env.example."""
        return [(ENV_PREFIX + f.name.upper(), f.default, f.metadata["doc"]) for f in dataclasses.fields(cls)]


def _check_together(value: Callable[[str], Any], label: Callable[[str], str]) -> None:
    """The settings checked against each other: ``value(name)`` is a setting's (parsed) value,
    ``label(name)`` how to name it (its variable or flag and where it came from, when known)."""
    transient, permanent = value("fault_transient_rate"), value("fault_permanent_rate")
    if transient + permanent > 1.0:
        raise ConfigError(f"{label('fault_transient_rate')} + {label('fault_permanent_rate')} must not exceed 1, "
                          f"got {transient} + {permanent}")
    cap, base = value("retry_cap_s"), value("retry_base_s")
    if cap < base:
        raise ConfigError(f"{label('retry_cap_s')} ({cap}) must be >= {label('retry_base_s')} ({base})")


def read_dotenv(path: str | os.PathLike) -> dict[str, str]:
    """The ``KEY=VALUE`` pairs of a .env file (UTF-8, a byte order mark allowed); empty if the file
    does not exist."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8-sig") as f:  # a BOM would otherwise become part of the first key
        text = f.read()
    try:
        from dotenv import dotenv_values
    except ImportError:
        values: dict[str, str] = {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            key = key.strip().removeprefix("export ").strip()
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            elif " #" in value:  # an inline comment, as python-dotenv reads it
                value = value.split(" #", 1)[0].rstrip()
            values[key] = value
        return values
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}
