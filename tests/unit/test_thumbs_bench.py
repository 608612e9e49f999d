"""The benchmark's ``thumbs`` scenario: photo-like sources, its rows and sources, opt-in, the RSS probe.

The end-to-end test runs ``benchmark.py --scenarios thumbs --quick`` with a few
tasks per row as a subprocess; it checks the rows succeed and land in the same
reports as every other scenario, never how fast they were.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskqueue import workload
from taskqueue.bench import cli, peakrss, thumbs
from taskqueue.bench.scenarios import ALL_SCENARIOS, SCENARIOS
from taskqueue.objectstore import LocalObjectStore
from taskqueue.processor import Processor
from taskqueue.task import Task

try:
    from PIL import Image
except ImportError:
    Image = None

needs_pillow = pytest.mark.skipif(Image is None, reason="Pillow is not installed: photos cannot be drawn")
REPO = Path(__file__).resolve().parents[2]


# -- photo-like sources ---------------------------------------------------------------------------

def test_photo_specs_are_deterministic_and_mix_sizes_orientations_and_cut_outs():
    photos = workload.photo_specs(12, seed=42)
    assert photos == workload.photo_specs(12, seed=42)
    assert len({p["key"] for p in photos}) == 12
    assert {(p["width"], p["height"]) for p in photos} == set(workload.PHOTO_SIZES)
    assert max(p["width"] * p["height"] for p in photos) == 24_000_000
    assert {p["orientation"] for p in photos} == {1, 6, 8}
    assert any(p["alpha"] for p in photos)
    assert all(p["key"].endswith(".png") == p["alpha"] for p in photos)
    assert all(p["width"] * p["height"] <= workload.ALPHA_MAX_PIXELS and p["orientation"] == 1
               for p in photos if p["alpha"])
    assert not any(p["alpha"] for p in workload.photo_specs(12, seed=42, alpha=False))


@pytest.mark.parametrize("sizes", [[], [(0, 10)], [(10,)], [(10, 10.5)], [(20000, 10)], "big"])
def test_photo_specs_refuse_bad_sizes(sizes):
    with pytest.raises(ValueError, match="sizes"):
        workload.photo_specs(2, seed=1, sizes=sizes)


@needs_pillow
def test_write_photo_draws_what_the_spec_says(store):
    jpeg, cut_out = workload.photo_specs(2, seed=5, sizes=[(96, 64)])
    sideways = workload.photo_specs(2, seed=5, sizes=[(96, 64)], alpha=False)[1]
    for spec in (jpeg, cut_out, sideways):
        assert workload.write_photo(store, spec, seed=5) == store.size(spec["key"])
    with Image.open(store.path_for(jpeg["key"])) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (96, 64))
        assert im.getexif().get(workload.EXIF_ORIENTATION) is None
    with Image.open(store.path_for(sideways["key"])) as im:
        assert im.getexif().get(workload.EXIF_ORIENTATION) == 6
    with Image.open(store.path_for(cut_out["key"])) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGBA", (96, 64))
        assert im.getpixel((48, 32))[3] == 255 and im.getpixel((0, 0))[3] == 0
    # The queue makes the sideways photo's thumbnail upright.
    out = Processor(store).process(Task(id="t", image_key=sideways["key"], variant="thumb_32"))
    with Image.open(store.path_for(out.key)) as im:
        assert im.size == (21, 32)


@needs_pillow
def test_write_photo_is_deterministic_per_seed(tmp_path):
    spec = workload.photo_specs(1, seed=3, sizes=[(64, 48)])[0]
    data = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        store = LocalObjectStore(tmp_path / name, fsync=False)
        workload.write_photo(store, spec, seed=seed)
        data.append(Path(store.path_for(spec["key"])).read_bytes())
    assert data[0] == data[1] != data[2]


# -- rows and sources -----------------------------------------------------------------------------------

def quick_specs(**changes):
    kwargs = {"clients": None, "tasks": None, "quick": True, "seed": 7, "repeat": 0, **changes}
    return thumbs.specs(ALL_SCENARIOS["thumbs"], **kwargs)


def test_thumbs_rows_are_the_three_implementations_at_50_and_100_then_the_scaling_rows():
    specs = quick_specs()
    assert [(s["clients"], s["label"], s["workers"]) for s in specs] == [
        (50, "baseline", 8), (50, "engine", 8), (50, "stdlib", 8),
        (100, "baseline", 8), (100, "engine", 8), (100, "stdlib", 8),
        (16, "engine-1w", 1), (16, "engine-2w", 2), (16, "engine-8w", 8)]
    assert {s["scenario"] for s in specs} == {"thumbs"}
    assert all(s["variant"] == ["thumb_256", "gray"] for s in specs[:6])
    assert all(s["variant"] == ["thumb_256"] for s in specs[6:])
    assert len({thumbs.sources_key(s) for s in specs}) == 1  # one set of photos for every row
    assert all(s["latency_s"] == s["transient_rate"] == s["permanent_rate"] == s["duplicate_fraction"] == 0
               for s in specs)


def test_thumbs_task_lists_give_every_task_its_own_key_and_mix_the_photos():
    spec = quick_specs(tasks=30)[0]
    raw, warm = thumbs.task_lists(spec)
    tasks = [Task.from_dict(item) for item in raw + warm]
    assert len(raw) == 30 and len(warm) == thumbs.WARMUP_TASKS
    assert len({t.idempotency_key for t in tasks}) == len(tasks)
    assert [t.variant for t in tasks[:4]] == ["thumb_256", "gray", "thumb_256", "gray"]
    photos = {p["key"].rsplit("/", 1)[1] for p in workload.photo_specs(thumbs.QUICK_PHOTOS, seed=7,
                                                                        sizes=thumbs.QUICK_SIZES)}
    assert {t.image_key.rsplit("/", 1)[1] for t in tasks[:len(raw)]} == photos
    assert raw == thumbs.task_lists(spec)[0]


@needs_pillow
def test_thumbs_sources_are_hard_links_to_a_few_distinct_photos(tmp_path):
    spec = {**quick_specs(tasks=14)[0], "photos": {"count": 3, "sizes": [[96, 64], [64, 48]], "slots": 7}}
    root = tmp_path / "sources"
    assert thumbs.prepare_sources(str(root), spec) == 7 + thumbs.WARMUP_TASKS
    store = LocalObjectStore(root)
    raw, warm = thumbs.task_lists(spec)
    inodes = {os.stat(store.path_for(item["image_key"])).st_ino for item in raw + warm}
    assert len(inodes) == 3
    for item in raw:
        Processor(store).process(Task.from_dict(item))  # every source is a decodable image


def test_thumbs_is_opt_in_and_all_includes_it():
    assert "thumbs" not in SCENARIOS and "thumbs" in ALL_SCENARIOS
    assert "thumbs" not in cli.parser().parse_args([]).scenarios
    assert cli.parser().parse_args(["--scenarios", "all"]).scenarios == list(ALL_SCENARIOS)
    specs = cli.plan(cli.parser().parse_args(["--scenarios", "io,thumbs", "--quick"]))
    assert {s["scenario"] for s in specs} == {"io", "thumbs"}
    assert all(("photos" in s) == (s["scenario"] == "thumbs") for s in specs)


def test_without_pillow_thumbs_is_skipped_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(thumbs, "available", lambda: False)
    assert cli.main(["--scenarios", "thumbs", "--quick", "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out == "thumbs: skipped: Pillow is not installed (pip install pillow)\n"
    assert not (tmp_path / "out").exists()


# -- the RSS probe --------------------------------------------------------------------------------------

@pytest.mark.skipif(not peakrss.available(), reason="os.wait4 is not available on this platform")
def test_peak_rss_is_the_commands_own_and_not_its_parents(tmp_path):
    grow = "x = bytearray(96 * 1024 * 1024); x[::4096] = b'1' * (len(x) // 4096)"
    big = peakrss.measure([sys.executable, "-c", grow], log=str(tmp_path / "big.log"))
    small = peakrss.measure([sys.executable, "-c", "pass"], log=str(tmp_path / "small.log"))
    assert big["exit"] == small["exit"] == 0
    assert big["peak_rss_kib"] >= 96 * 1024
    assert small["peak_rss_kib"] < 48 * 1024  # not the memory of the pytest process that asked
    failing = peakrss.measure([sys.executable, "-c", "raise SystemExit(3)"], log=str(tmp_path / "fail.log"))
    assert failing["exit"] == 3


# -- end to end -----------------------------------------------------------------------------------------

@needs_pillow
def test_benchmark_thumbs_quick_lands_in_the_same_reports(tmp_path):
    out = tmp_path / "reports"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    proc = subprocess.run([sys.executable, str(REPO / "benchmark.py"), "--scenarios", "thumbs", "--quick",
                           "--tasks", "6", "--clients", "3", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "thumbs scaling: engine, thumb_256 only" in proc.stdout
    assert "peak RSS of `task_queue_optimized.py run`" in proc.stdout
    doc = json.loads((out / "benchmark.json").read_text())
    rows = [(r["clients"], r["label"]) for r in doc["rows"] if r["scenario"] == "thumbs"]
    assert rows == [(3, "baseline"), (3, "engine"), (3, "stdlib"),
                    (16, "engine-1w"), (16, "engine-2w"), (16, "engine-8w")]
    for row in doc["rows"]:
        assert (row["completed"], row["failed"]) == (6, 0), (row["label"], row["errors_by_type"])
    assert [s["workers"] for s in doc["thumbs"]["scaling"]] == [1, 2, 8]
    assert all(s["thumbnails_per_s"] > 0 for s in doc["thumbs"]["scaling"])
    runs = doc["thumbs"]["rss"]["runs"]
    assert [(r["kind"], r["workers"]) for r in runs] == [("floor", 1), ("photos", 1), ("photos", 8)]
    assert all(r["peak_rss_kib"] > 0 for r in runs)
    table = list(csv.DictReader(io.StringIO((out / "benchmark.csv").read_text())))
    assert [(r["scenario"], r["label"]) for r in table][:3] == [("thumbs", "baseline"), ("thumbs", "engine"),
                                                                 ("thumbs", "stdlib")]
    assert "thumbs · 3 clients" in (out / "benchmark.svg").read_text()
