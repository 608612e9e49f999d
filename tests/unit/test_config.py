"""Config: defaults, precedence (flags > environment > .env > defaults), validation messages, .env parsing."""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest

from taskqueue.config import ENV_PREFIX, FLAG_NAMES, Config, read_dotenv
from taskqueue.errors import ConfigError
from taskqueue.processor import FaultConfig


def from_env(overrides=None, environ=None, dotenv_path=None):
    """Config.from_env isolated from the real os.environ and from any ./.env."""
    return Config.from_env(overrides, environ=environ or {}, dotenv_path=dotenv_path)


@pytest.fixture
def without_python_dotenv(monkeypatch):
    """Make `from dotenv import dotenv_values` fail, forcing the fallback parser."""
    monkeypatch.setitem(sys.modules, "dotenv", None)


# -- defaults -----------------------------------------------------------------------------------

def test_defaults():
    c = from_env()
    assert c == Config()
    assert (c.db, c.store) == ("tasks.db", "store")
    assert (c.workers, c.queue_size, c.on_full, c.put_timeout_s, c.max_attempts) == (8, 128, "block", None, 3)
    assert (c.retry_base_s, c.retry_cap_s, c.lease_s) == (0.1, 10.0, 300.0)
    assert (c.db_synchronous, c.busy_timeout_ms, c.chunk_size, c.fsync_outputs) == ("normal", 10000, 65536, True)
    assert c.commit_linger_s == 0.002
    assert (c.shutdown_grace_s, c.max_task_file_bytes, c.retry_seed) == (30.0, 64 * 1024 * 1024, None)
    assert (c.fault_latency_s, c.fault_jitter_s, c.fault_transient_rate, c.fault_permanent_rate,
            c.fault_timeout_s, c.fault_seed, c.log_level) == (0.0, 0.0, 0.0, 0.0, None, 0, None)
    assert 4 <= c.workers <= 8 and 100 <= c.queue_size <= 200  # the ranges the requirements ask for


def test_describe_lists_every_setting_with_its_variable_and_default():
    rows = Config.describe()
    assert [name for name, _, _ in rows] == [ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Config)]
    assert ("TQ_WORKERS", 8) in [(name, default) for name, default, _ in rows]
    assert all(doc for _, _, doc in rows)


# -- precedence ----------------------------------------------------------------------------------

def test_precedence_overrides_then_environ_then_dotenv_then_default(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("TQ_WORKERS=2\nTQ_QUEUE_SIZE=150\nTQ_MAX_ATTEMPTS=5\nTQ_LOG_LEVEL=debug\n")
    environ = {"TQ_WORKERS": "3", "TQ_QUEUE_SIZE": "160", "TQ_ON_FULL": "reject"}
    c = from_env({"workers": 4, "retry_seed": None}, environ, env_file)
    assert c.workers == 4                # flag beats environment and .env
    assert c.queue_size == 160           # environment beats .env
    assert c.on_full == "reject"         # environment only
    assert c.max_attempts == 5           # .env only
    assert c.log_level == "debug"
    assert c.retry_seed is None          # None override: an unset flag, ignored
    assert c.lease_s == 300.0            # default


def test_none_override_falls_through_to_the_environment():
    assert from_env({"workers": None}, {"TQ_WORKERS": "5"}).workers == 5


def test_from_env_does_not_modify_os_environ(tmp_path, monkeypatch):
    monkeypatch.delenv("TQ_WORKERS", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("TQ_WORKERS=2\n")
    before = dict(os.environ)
    assert Config.from_env(environ={}, dotenv_path=env_file).workers == 2
    assert dict(os.environ) == before


def test_default_dotenv_path_is_dot_env_in_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("TQ_WORKERS=6\n")
    monkeypatch.chdir(tmp_path)
    assert Config.from_env(environ={}).workers == 6
    assert Config.from_env(environ={}, dotenv_path=None).workers == 8


def test_missing_dotenv_file_is_no_error(tmp_path):
    assert read_dotenv(tmp_path / "absent.env") == {}
    assert from_env(dotenv_path=tmp_path / "absent.env") == Config()


def test_environ_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("TQ_QUEUE_SIZE", "111")
    assert Config.from_env(dotenv_path=None).queue_size == 111


@pytest.mark.parametrize("name, raw, expected", [
    ("fsync_outputs", "0", False), ("fsync_outputs", "off", False), ("fsync_outputs", " YES ", True),
    ("on_full", " Reject ", "reject"),
    ("put_timeout_s", "2.5", 2.5), ("put_timeout_s", "none", None), ("put_timeout_s", "", None),
    ("fault_timeout_s", "0.25", 0.25), ("fault_timeout_s", "None", None),
    ("retry_seed", "17", 17), ("retry_seed", "none", None), ("retry_seed", "", None),
    ("fault_seed", "-3", -3), ("workers", " 12 ", 12), ("db", "/var/lib/tq.db", "/var/lib/tq.db"), ("fault_transient_rate", "1", 1.0),
    ("fault_permanent_rate", "0", 0.0), ("retry_base_s", "0", 0.0), ("fault_latency_s", "1e-3", 0.001),
])
def test_values_are_parsed_from_strings(name, raw, expected):
    value = getattr(from_env(environ={ENV_PREFIX + name.upper(): raw}), name)
    assert value == expected and type(value) is type(expected)


# -- validation -----------------------------------------------------------------------------------

INVALID = [
    ("workers", "0"), ("workers", "-2"), ("workers", "eight"), ("workers", "8.0"), ("workers", ""),
    ("queue_size", "-1"), ("queue_size", "0"), ("max_attempts", "0"), ("busy_timeout_ms", "0"),
    ("chunk_size", "0"), ("max_task_file_bytes", "-5"),
    ("on_full", "drop"), ("on_full", ""), ("db_synchronous", "off"), ("log_level", "trace"),
    ("fault_transient_rate", "1.5"), ("fault_transient_rate", "-0.1"), ("fault_permanent_rate", "2"),
    ("fault_transient_rate", "nan"), ("fault_permanent_rate", "high"),
    ("fault_latency_s", "-1"), ("fault_latency_s", "inf"), ("fault_latency_s", "3601"),
    ("fault_jitter_s", "-0.5"), ("fault_timeout_s", "0"), ("fault_timeout_s", "-1"),
    ("put_timeout_s", "0"), ("lease_s", "0"), ("retry_base_s", "-0.1"), ("commit_linger_s", "-0.001"),
    ("commit_linger_s", "nan"),
    # Found by a review: a lease of 1 ms (or 5e-324) was accepted, and live workers' tasks were taken
    # over, run again and dead-lettered; a metrics interval of 1e-300 rewrote the file flat out.
    ("lease_s", "0.001"), ("lease_s", "0.5"), ("metrics_interval_s", "1e-300"), ("metrics_interval_s", "0.001"), ("shutdown_grace_s", "soon"),
    ("fsync_outputs", "maybe"), ("retry_seed", "x"), ("fault_seed", "1.5"), ("db", ""), ("store", "  "),
]


@pytest.mark.parametrize("name, raw", INVALID, ids=[f"{n}={r!r}" for n, r in INVALID])
def test_invalid_environment_value_names_the_variable_and_the_value(name, raw):
    var = ENV_PREFIX + name.upper()
    with pytest.raises(ConfigError) as info:
        from_env(environ={var: raw})
    message = str(info.value)
    assert var in message and "environment" in message
    assert repr(raw) in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name, raw", INVALID, ids=[f"{n}={r!r}" for n, r in INVALID])
def test_invalid_dotenv_value_names_the_variable_and_the_file(tmp_path, name, raw):
    var = ENV_PREFIX + name.upper()
    env_file = tmp_path / ".env"
    env_file.write_text(f"{var}='{raw}'\n")
    with pytest.raises(ConfigError) as info:
        from_env(dotenv_path=env_file)
    assert var in str(info.value) and ".env" in str(info.value) and repr(raw) in str(info.value)


@pytest.mark.parametrize("name, value", [
    ("workers", 0), ("queue_size", -1), ("fault_transient_rate", 1.01), ("on_full", "sometimes"),
    ("workers", True), ("workers", 2.0), ("fault_latency_s", False),
])
def test_invalid_flag_value_names_the_flag_and_the_value(name, value):
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ConfigError) as info:
        from_env({name: value})
    assert flag in str(info.value) and repr(value) in str(info.value)


@pytest.mark.parametrize("name, value", [("workers", 0), ("queue_size", -1), ("on_full", "drop"),
                                         ("fault_permanent_rate", -0.5), ("workers", "many")])
def test_direct_construction_validates_too(name, value):
    with pytest.raises(ConfigError) as info:
        Config(**{name: value})
    assert name in str(info.value) and repr(value) in str(info.value)


# Every setting with an upper bound: its maximum, and a value just above it.
MAX_S = 30 * 24 * 3600  # durations: below threading.TIMEOUT_MAX on every platform (Windows: ~4294967 s)
BOUNDED = [
    ("workers", 1024, 1025), ("queue_size", 1_000_000, 1_000_001),
    ("chunk_size", 64 * 1024 * 1024, 64 * 1024 * 1024 + 1), ("busy_timeout_ms", 2 ** 31 - 1, 2 ** 31),
    ("lease_s", MAX_S, MAX_S + 0.5), ("metrics_interval_s", MAX_S, MAX_S + 1.0),
    ("retry_base_s", MAX_S, MAX_S + 1.0), ("retry_cap_s", MAX_S, 1e11),
    ("shutdown_grace_s", MAX_S, 1e300), ("put_timeout_s", MAX_S, MAX_S + 1.0),
    ("fault_timeout_s", MAX_S, MAX_S + 1.0), ("commit_linger_s", 0.1, 0.101),
]
BOUNDED_IDS = [name for name, _, _ in BOUNDED]


@pytest.mark.parametrize("name, maximum, above", BOUNDED, ids=BOUNDED_IDS)
def test_value_above_the_maximum_is_refused_naming_the_setting_the_value_and_the_maximum(name, maximum, above):
    var, raw = ENV_PREFIX + name.upper(), str(above)
    with pytest.raises(ConfigError) as info:
        from_env(environ={var: raw})
    message = str(info.value)
    assert message.startswith(f"{var} (environment): ") and message.endswith(f", got {raw!r}"), message
    # integers: "must be at most 1024"; durations, as every float range: "must be within [0, 2592000]"
    assert f"must be at most {maximum}," in message or f", {maximum}]," in message, message


@pytest.mark.parametrize("name, maximum, above", BOUNDED, ids=BOUNDED_IDS)
def test_value_above_the_maximum_is_refused_from_a_flag_and_from_direct_construction(name, maximum, above):
    flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
    with pytest.raises(ConfigError) as info:
        Config.from_env({name: above}, environ={}, dotenv_path=None, flags=FLAG_NAMES)
    assert str(info.value).startswith(f"{flag}: ") and str(info.value).endswith(f", got {above!r}")
    with pytest.raises(ConfigError) as info:
        Config(**{name: above})
    assert str(info.value).startswith(f"{name}: ") and str(info.value).endswith(f", got {above!r}")


@pytest.mark.parametrize("name, maximum, above", BOUNDED, ids=BOUNDED_IDS)
def test_exactly_the_maximum_is_accepted(name, maximum, above):
    environ = {ENV_PREFIX + name.upper(): str(maximum)}
    if name == "retry_base_s":
        environ["TQ_RETRY_CAP_S"] = str(maximum)  # the cap must be >= the base
    value = getattr(from_env(environ=environ), name)
    assert value == maximum and type(value) is type(above)
    assert getattr(Config(**{name: maximum, **({"retry_cap_s": maximum} if name == "retry_base_s" else {})}),
                   name) == maximum


def test_durations_stay_below_threading_timeout_max_on_every_platform():
    import threading

    windows_timeout_max = 0xFFFFFFFF / 1000  # a Windows wait is a DWORD of milliseconds: ~49.7 days
    for name in ("put_timeout_s", "retry_base_s", "retry_cap_s", "lease_s", "shutdown_grace_s",
                 "fault_timeout_s", "metrics_interval_s"):
        maximum = dict((n, m) for n, m, _ in BOUNDED)[name]
        assert maximum < windows_timeout_max and maximum < threading.TIMEOUT_MAX


@pytest.mark.parametrize("name", ["lease_s", "retry_cap_s", "shutdown_grace_s", "put_timeout_s",
                                  "fault_timeout_s", "metrics_interval_s"])
@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "1e309"])
def test_durations_refuse_nan_and_infinity(name, raw):
    var = ENV_PREFIX + name.upper()
    with pytest.raises(ConfigError, match=f"^{var} \\(environment\\): must be a finite number, got {raw!r}$"):
        from_env(environ={var: raw})


def test_unknown_override_is_refused():
    with pytest.raises(ConfigError, match="'wrokers'"):
        from_env({"wrokers": 4})


def test_rates_summing_over_one_are_refused():
    with pytest.raises(ConfigError, match="TQ_FAULT_TRANSIENT_RATE .* \\+ TQ_FAULT_PERMANENT_RATE .* must not exceed 1"):
        from_env(environ={"TQ_FAULT_TRANSIENT_RATE": "0.7", "TQ_FAULT_PERMANENT_RATE": "0.4"})
    assert from_env(environ={"TQ_FAULT_TRANSIENT_RATE": "0.6", "TQ_FAULT_PERMANENT_RATE": "0.4"})


def test_retry_cap_below_base_is_refused():
    with pytest.raises(ConfigError, match="--retry-cap-s \\(1.0\\) must be >= --retry-base-s \\(2.0\\)"):
        from_env({"retry_base_s": 2.0, "retry_cap_s": 1.0})
    with pytest.raises(ConfigError, match="retry_cap_s \\(1.0\\) must be >= retry_base_s"):
        Config(retry_base_s=2.0, retry_cap_s=1.0)  # built directly: no source to name


# -- the value object -------------------------------------------------------------------------------

def test_config_is_frozen():
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.workers = 1


def test_replace_returns_a_validated_copy():
    c = Config()
    d = c.replace(workers=2)
    assert (c.workers, d.workers) == (8, 2)
    with pytest.raises(ConfigError):
        c.replace(queue_size=0)


def test_config_is_keyword_only():
    first = dataclasses.fields(Config)[0]
    with pytest.raises(TypeError):
        Config(first.default)  # a valid value, passed positionally


def test_faults_builds_the_fault_config():
    c = from_env(environ={"TQ_FAULT_LATENCY_S": "0.05", "TQ_FAULT_JITTER_S": "0.01",
                          "TQ_FAULT_TRANSIENT_RATE": "0.2", "TQ_FAULT_PERMANENT_RATE": "0.1",
                          "TQ_FAULT_TIMEOUT_S": "2", "TQ_FAULT_SEED": "99"})
    assert c.faults == FaultConfig(latency_s=0.05, jitter_s=0.01, transient_rate=0.2, permanent_rate=0.1,
                                   timeout_s=2.0, seed=99)
    assert Config().faults == FaultConfig() and not Config().faults.active


# -- .env parsing: python-dotenv and the fallback agree ------------------------------------------------

DOTENV = """\
# a comment line

TQ_WORKERS=4
export TQ_QUEUE_SIZE=64
TQ_ON_FULL = reject
TQ_LOG_LEVEL="debug"
TQ_DB_SYNCHRONOUS='full'
TQ_FAULT_TIMEOUT_S=
TQ_FAULT_SEED = 12
TQ_NOT_A_SETTING=ignored
TQ_NO_EQUALS_SIGN
"""


def test_python_dotenv_and_the_fallback_parser_give_the_same_values(tmp_path, monkeypatch):
    pytest.importorskip("dotenv")
    env_file = tmp_path / ".env"
    env_file.write_text(DOTENV)
    with_dotenv = read_dotenv(env_file)
    config_with_dotenv = from_env(dotenv_path=env_file)
    monkeypatch.setitem(sys.modules, "dotenv", None)
    fallback = read_dotenv(env_file)
    assert fallback == with_dotenv
    assert from_env(dotenv_path=env_file) == config_with_dotenv
    assert (config_with_dotenv.workers, config_with_dotenv.queue_size, config_with_dotenv.on_full,
            config_with_dotenv.log_level, config_with_dotenv.db_synchronous,
            config_with_dotenv.fault_timeout_s, config_with_dotenv.fault_seed) == (
        4, 64, "reject", "debug", "full", None, 12)


def test_fallback_parser_alone(tmp_path, without_python_dotenv):
    env_file = tmp_path / ".env"
    env_file.write_text(DOTENV)
    assert read_dotenv(env_file) == {
        "TQ_WORKERS": "4", "TQ_QUEUE_SIZE": "64", "TQ_ON_FULL": "reject", "TQ_LOG_LEVEL": "debug",
        "TQ_DB_SYNCHRONOUS": "full", "TQ_FAULT_TIMEOUT_S": "", "TQ_FAULT_SEED": "12",
        "TQ_NOT_A_SETTING": "ignored"}


def test_inline_comments_are_parsed_alike(tmp_path, monkeypatch):
    pytest.importorskip("dotenv")
    env_file = tmp_path / ".env"
    env_file.write_text("TQ_WORKERS=4 # four workers\n")
    assert from_env(dotenv_path=env_file).workers == 4
    monkeypatch.setitem(sys.modules, "dotenv", None)
    assert read_dotenv(env_file) == {"TQ_WORKERS": "4"}


def test_the_committed_env_example_lists_every_setting_as_config_describes_it():
    from pathlib import Path

    committed = (Path(__file__).resolve().parents[2] / ".env.example").read_text(encoding="utf-8")
    assert committed == Config.dotenv_example(), "regenerate: python3 -c 'from taskqueue.config import Config; " \
                                                 "open(\".env.example\", \"w\").write(Config.dotenv_example())'"


@pytest.mark.parametrize("parser", ["python-dotenv", "fallback"])
def test_a_byte_order_mark_does_not_hide_the_first_setting(tmp_path, monkeypatch, parser):
    """Found by a review: a .env saved with a BOM (Windows editors) lost its first line, silently: the
    fallback parser (and python-dotenv before 1.2.4) read the key as '\\ufeffTQ_DB'."""
    if parser == "python-dotenv":
        pytest.importorskip("dotenv")
    else:
        monkeypatch.setitem(sys.modules, "dotenv", None)
    env_file = tmp_path / ".env"
    env_file.write_bytes("TQ_DB=other.db\nTQ_WORKERS=3\n".encode("utf-8-sig"))
    assert read_dotenv(env_file) == {"TQ_DB": "other.db", "TQ_WORKERS": "3"}


@pytest.mark.parametrize("environ, named", [
    ({"TQ_RETRY_CAP_S": "0.01"}, ["TQ_RETRY_CAP_S (environment)", "retry_base_s (default)", "0.01", "0.1"]),
    ({"TQ_RETRY_BASE_S": "20"}, ["retry_cap_s (default)", "TQ_RETRY_BASE_S (environment)", "20"]),
    ({"TQ_FAULT_TRANSIENT_RATE": "0.7", "TQ_FAULT_PERMANENT_RATE": "0.7"},
     ["TQ_FAULT_TRANSIENT_RATE (environment)", "TQ_FAULT_PERMANENT_RATE (environment)", "0.7 + 0.7"]),
])
def test_settings_that_conflict_are_named_with_where_they_came_from(environ, named):
    """Found by a review: two settings checked together were named by their field names alone
    ('retry_cap_s (0.01) must be >= retry_base_s (0.1)'), not by the variable or flag that set them."""
    with pytest.raises(ConfigError) as info:
        from_env(environ=environ)
    for text in named:
        assert text in str(info.value), str(info.value)


def test_a_tq_name_that_is_no_setting_is_ignored_and_listed_with_the_setting_it_is_closest_to(tmp_path):
    """Found in review: TQ_WORKRS=4 in .env or the environment changed nothing, silently."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("TQ_QUEUE_SIZ=8\nTQ_WORKERS=2\n", encoding="utf-8")
    config = Config.from_env(environ={"TQ_WORKRS": "4", "TQ_TEST_PG_BIN": "/x", "PATH": "/bin"},
                             dotenv_path=dotenv)
    assert config.workers == 2
    assert config.ignored == (("TQ_QUEUE_SIZ", ".env", "TQ_QUEUE_SIZE"), ("TQ_WORKRS", "environment", "TQ_WORKERS"))
    assert Config.from_env(environ={}, dotenv_path=None).ignored == ()
