"""The load comparison (python -m taskqueue.bench.gilload): its loads, and real rows beside them."""

from __future__ import annotations

import json
import os
import threading

import pytest

from taskqueue.bench import gilload
from taskqueue.bench.scenarios import ALL_SCENARIOS, row_spec
from tests.polling import wait_until


class StepClock:
    """A clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_the_thread_load_spins_for_its_share_then_pauses_for_the_rest_of_the_period():
    pauses: list[float] = []

    def wait(timeout: float) -> bool:  # the third pause ends the load, as stop() would
        pauses.append(timeout)
        return len(pauses) == 3

    load = gilload.ThreadLoad(0.002, 0.010, clock=StepClock(0.0005), wait=wait).start()
    load._thread.join(60)  # it ends on its own, after its third pause
    assert not load._thread.is_alive()
    assert load.cycles == 3
    assert pauses == [pytest.approx(0.008)] * 3
    # Each loop reads the clock to begin, 4 times until 2 ms have passed, once more to add up: 2.5 ms.
    assert load.busy_total_s == pytest.approx(3 * 0.0025)


def test_a_real_thread_load_burns_cpu_and_stops_when_told():
    load = gilload.ThreadLoad(0.001, 0.002)
    cycled = threading.Event()
    pause = load._wait

    def wait(timeout: float) -> bool:
        if load.cycles >= 3:
            cycled.set()
        return pause(timeout)

    load._wait = wait
    load.start()
    try:
        assert cycled.wait(60)
    finally:
        load.stop()
    assert not load._thread.is_alive()
    assert load.cycles >= 3 and load.busy_total_s >= 0.003
    assert load.cpu_s > 0.0  # the loop is pure Python: it burns CPU, it does not sleep


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads a child's CPU time from /proc")
def test_a_process_load_runs_beside_this_one_and_is_reaped_with_its_cpu_time():
    load = gilload.ProcessLoad(0.005, 0.010).start()
    pid = load._child.pid
    try:
        def child_cpu_ticks() -> int:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks

        wait_until(lambda: child_cpu_ticks() > 0, "the load process to burn CPU")
    finally:
        load.stop()
    assert load.cpu_s > 0.0
    assert not os.path.exists(f"/proc/{pid}")  # killed and reaped: no zombie left
    load.stop()  # twice: harmless


def test_loads_never_started_stop_harmlessly():
    gilload.ThreadLoad(0.001, 0.002).stop()
    gilload.ProcessLoad(0.001, 0.002).stop()


@pytest.mark.parametrize("kind", [gilload.ThreadLoad, gilload.ProcessLoad])
@pytest.mark.parametrize("busy, period", [(0.0, 0.001), (0.001, 0.001), (0.002, 0.001), (-1.0, 1.0)])
def test_a_load_that_is_not_a_share_of_its_period_is_refused_naming_both(kind, busy, period):
    with pytest.raises(ValueError, match=f"busy_s={busy!r}, period_s={period!r}"):
        kind(busy, period)


@pytest.mark.parametrize("argv, named", [
    (["--load-us", "1000", "--period-us", "1000"], "--load-us must be below --period-us, got 1000 and 1000"),
    (["--duration", "0"], "--duration"),
    (["--duration", "abc"], "expected a number of seconds, got 'abc'"),
    (["--duration", "nan"], "--duration"),
    (["--rounds", "0"], "--rounds"),
    (["--load-us", "-5"], "--load-us"),
    (["--clients", "many"], "expected an integer, got 'many'"),
    (["--out", "/no/such/dir/gil.json"], "--out: no directory '/no/such/dir'"),
])
def test_bad_flags_exit_2_naming_the_flag(argv, named, capsys):
    with pytest.raises(SystemExit) as info:
        gilload.main(argv)
    assert info.value.code == 2
    assert named in capsys.readouterr().err


def test_an_unknown_place_for_the_load_is_refused():
    spec = row_spec(ALL_SCENARIOS["io"], "stdlib", "-", clients=2, tasks=4, seed=7, repeat=0)
    with pytest.raises(ValueError, match="'gpu'"):
        gilload.run_loaded_row(spec, 100, 1000, "gpu")


@pytest.mark.parametrize("load_in", gilload.LOADS)
def test_a_row_with_a_load_reports_its_calls_and_the_load_beside_its_timed_part(load_in):
    spec = row_spec(ALL_SCENARIOS["io"], "stdlib", "-", clients=4, tasks=40, seed=7, repeat=0)
    result = gilload.run_loaded_row(spec, 300, 1000, load_in)
    assert result["completed"] == 40 and result["process_calls"] == 40  # the pool runs each task, duplicates too
    assert result["load_us"] == 300 and result["load_in"] == load_in and result["load_cores"] > 0.0
    assert gilload.per_call_ms(result) == pytest.approx(result["busy_s"] / 40 * 1000)
    # A thread load is one of the row's threads while the load runs; a process load is not.
    threads = result["cpu_us_per_task_by_thread"]
    if threads is not None:  # Linux
        assert ("gil-load" in threads) == (load_in == "thread")
    assert not any(t.name == "gil-load" for t in threading.enumerate())  # stopped with the row


def test_a_row_without_a_load_has_none():
    spec = row_spec(ALL_SCENARIOS["io"], "stdlib", "-", clients=4, tasks=20, seed=7, repeat=0)
    result = gilload.run_loaded_row(spec, 0, 1000)
    assert result["load_cores"] == 0.0 and result["load_in"] is None and result["process_calls"] == 20
    assert gilload.per_call_ms({"busy_s": 0.0, "process_calls": 0}) is None


def test_the_command_runs_each_variant_in_turn_and_writes_medians(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --out relative to where the command runs, not where its rows run
    assert gilload.main(["--rounds", "2", "--duration", "0.3", "--clients", "4", "--out", "gil.json"]) == 0
    text = capsys.readouterr().out
    names = ["stdlib", "stdlib+thread200us", "stdlib+process200us", "engine"]
    round_lines = [line.split()[:3] for line in text.splitlines() if line.startswith("  round ")]
    assert round_lines[:4] == [["round", "0", name] for name in names]
    assert round_lines[4:] == [["round", "1", name] for name in names[1:] + names[:1]]  # the order turns
    report = json.loads((tmp_path / "gil.json").read_text())
    assert report["command"] == "python -m taskqueue.bench.gilload --rounds 2 --duration 0.3 --clients 4 --out gil.json"
    assert list(report["summary"]) == names
    assert report["summary"]["stdlib"]["ms_per_call_vs_stdlib"] == 1.0
    for name, rows in report["rows"].items():
        assert [row["repeat"] for row in rows] == [0, 1]  # the warm-up row is not among them
        assert all(row["completed"] > 0 and row["process_calls"] > 0 for row in rows)
        assert all((row["load_cores"] > 0) == ("+" in name) for row in rows)
        assert all(row["label"] == ("engine" if name == "engine" else "stdlib") for row in rows)
