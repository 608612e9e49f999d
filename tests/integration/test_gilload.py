"""The GIL-load comparison (python -m taskqueue.bench.gilload): its load thread, and real rows beside it."""

from __future__ import annotations

import json
import threading

import pytest

from taskqueue.bench import gilload
from taskqueue.bench.scenarios import ALL_SCENARIOS, row_spec


class StepClock:
    """A clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_the_load_spins_for_its_share_then_pauses_for_the_rest_of_the_period():
    pauses: list[float] = []

    def wait(timeout: float) -> bool:  # the third pause ends the load, as stop() would
        pauses.append(timeout)
        return len(pauses) == 3

    load = gilload.GilLoad(0.002, 0.010, clock=StepClock(0.0005), wait=wait).start()
    load._thread.join()  # it ended on its own, after its third pause
    assert load.cycles == 3
    assert pauses == [pytest.approx(0.008)] * 3
    # Each loop reads the clock to begin, 4 times until 2 ms have passed, once more to add up: 2.5 ms.
    assert load.busy_total_s == pytest.approx(3 * 0.0025)
    assert load.cpu_s >= 0.0


def test_a_real_load_holds_the_cpu_and_stops_when_told():
    cycled = threading.Event()
    load = gilload.GilLoad(0.001, 0.002)
    original = load._wait

    def wait(timeout: float) -> bool:
        if load.cycles >= 3:
            cycled.set()
        return original(timeout)

    load._wait = wait
    load.start()
    assert cycled.wait(30)
    load.stop()
    assert not load._thread.is_alive()
    assert load.cycles >= 3 and load.busy_total_s >= 0.003
    assert load.cpu_s > 0.0  # the loop is pure Python: it burns CPU, not sleep


@pytest.mark.parametrize("busy, period", [(0.0, 0.001), (0.001, 0.001), (0.002, 0.001), (-1.0, 1.0)])
def test_a_load_that_is_not_a_share_of_its_period_is_refused_naming_both(busy, period):
    with pytest.raises(ValueError, match=f"busy_s={busy!r}, period_s={period!r}"):
        gilload.GilLoad(busy, period)


@pytest.mark.parametrize("argv, named", [
    (["--load-us", "1000", "--period-us", "1000"], "--load-us must be below --period-us, got 1000 and 1000"),
    (["--duration", "0"], "--duration"),
    (["--duration", "nan"], "--duration"),
    (["--rounds", "0"], "--rounds"),
    (["--load-us", "-5"], "--load-us"),
    (["--clients", "many"], "--clients"),
])
def test_bad_flags_exit_2_naming_the_flag(argv, named, capsys):
    with pytest.raises(SystemExit) as info:
        gilload.main(argv)
    assert info.value.code == 2
    assert named in capsys.readouterr().err


def test_a_row_with_a_load_reports_its_calls_and_the_load_it_ran_beside():
    scenario = ALL_SCENARIOS["io"]
    spec = row_spec(scenario, "stdlib", "-", clients=4, tasks=40, seed=7, repeat=0)
    result = gilload.run_loaded_row(spec, 300, 1000)
    assert result["completed"] == 40 and result["process_calls"] == 40  # the pool runs each task, duplicates too
    assert result["gil_load_us"] == 300 and result["gil_load_cores"] > 0.0
    assert gilload.per_call_ms(result) == pytest.approx(result["busy_s"] / 40 * 1000)
    assert not any(t.name == "gil-load" for t in threading.enumerate())  # stopped with the row
    unloaded = gilload.run_loaded_row(spec, 0, 1000)
    assert unloaded["gil_load_cores"] == 0.0 and unloaded["process_calls"] == 40


def test_the_command_runs_each_variant_in_turn_and_writes_medians(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the rows run in subprocesses: the package must come from sys.path, not cwd
    out = tmp_path / "gil.json"
    assert gilload.main(["--rounds", "1", "--duration", "0.3", "--clients", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "round 0 stdlib " in text and "round 0 stdlib+load200us" in text and "round 0 engine" in text
    report = json.loads(out.read_text())
    assert report["command"] == "python -m taskqueue.bench.gilload --rounds 1 --duration 0.3 --clients 4 " \
                                f"--out {out}"
    assert set(report["summary"]) == {"stdlib", "stdlib+load200us", "engine"}
    assert report["summary"]["stdlib"]["ms_per_call_vs_stdlib"] == 1.0
    for name, rows in report["rows"].items():
        assert len(rows) == 1 and rows[0]["completed"] > 0 and rows[0]["process_calls"] > 0
        assert (rows[0]["gil_load_cores"] > 0) == (name == "stdlib+load200us")
        assert rows[0]["label"] == ("engine" if name == "engine" else "stdlib")
