"""Deterministic workloads: task lists, source objects, and the small sample task file."""

from __future__ import annotations

import gzip
import io
import json
import os
import pathlib

import pytest

from taskqueue import workload
from taskqueue.errors import (DependencyMissing, InvalidParameter, SourceMissing,
                              UnknownVariant)
from taskqueue.objectstore import LocalObjectStore
from taskqueue.processor import Processor
from taskqueue.task import Task

REPO = pathlib.Path(__file__).resolve().parents[2]
SAMPLE = REPO / "input_new" / "sample_tasks_small.json"
MIX = {"gzip": 0.6, "thumb_128": 0.3, "gray": 0.1}


@pytest.fixture
def store(tmp_path):
    return LocalObjectStore(tmp_path / "store", fsync=False)


def _objects(store: LocalObjectStore) -> dict[str, bytes]:
    root = pathlib.Path(store.root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _repeats(tasks: list[dict]) -> list[int]:
    """Indexes of tasks whose (image_key, variant) pair appeared earlier."""
    seen, repeats = set(), []
    for i, t in enumerate(tasks):
        pair = (t["image_key"], t["variant"])
        if pair in seen:
            repeats.append(i)
        seen.add(pair)
    return repeats


# -- generate_tasks ------------------------------------------------------------------

def test_same_seed_gives_the_same_task_list_and_another_seed_a_different_one():
    first = workload.generate_tasks(500, seed=7, variants=MIX, missing_fraction=0.05)
    assert first == workload.generate_tasks(500, seed=7, variants=MIX, missing_fraction=0.05)
    other = workload.generate_tasks(500, seed=8, variants=MIX, missing_fraction=0.05)
    assert other != first
    assert {t["image_key"] for t in other}.isdisjoint({t["image_key"] for t in first})


def test_every_generated_task_is_valid_and_ids_are_unique():
    tasks = workload.generate_tasks(300, seed=1, variants=MIX)
    assert len({t["id"] for t in tasks}) == 300
    for item in tasks:
        task = Task.from_dict(item)
        Processor.output_key(task)  # known variant, valid parameters
        assert task.to_dict() == item


@pytest.mark.parametrize("count, fraction, expected", [
    (1000, 0.10, 100), (1000, 0.0, 0), (7, 0.5, 4), (1, 0.9, 0), (0, 0.5, 0), (400, 0.333, 133)])
def test_duplicate_count_is_the_rounded_fraction(count, fraction, expected):
    tasks = workload.generate_tasks(count, seed=3, duplicate_fraction=fraction)
    assert len(tasks) == count
    repeats = _repeats(tasks)
    assert len(repeats) == expected
    assert 0 not in repeats  # the first task is always an original


def test_duplicates_are_scattered_and_some_sit_close_to_their_original():
    tasks = workload.generate_tasks(2000, seed=11, duplicate_fraction=0.1)
    first_seen: dict[tuple, int] = {}
    distances = []
    for i, t in enumerate(tasks):
        pair = (t["image_key"], t["variant"])
        if pair in first_seen:
            distances.append(i - first_seen[pair])
        first_seen.setdefault(pair, i)
    positions = _repeats(tasks)
    assert positions[0] < 500 and positions[-1] > 1500
    # Close enough to be in flight together under 100 closed-loop clients; and far ones too.
    assert sum(d <= workload.RECENT_WINDOW for d in distances) >= 50
    assert max(distances) > 200


def test_variant_weights_are_followed_and_zero_weight_never_drawn():
    tasks = workload.generate_tasks(2000, seed=5, variants={"gzip": 3, "gray": 1, "thumb_64": 0},
                                    duplicate_fraction=0.0)
    counts = {v: sum(t["variant"] == v for t in tasks) for v in ("gzip", "gray", "thumb_64")}
    assert counts["thumb_64"] == 0
    assert 1350 <= counts["gzip"] <= 1650  # expectation 1500; the seed fixes the draw


def test_image_keys_follow_the_variant_unless_images_is_forced():
    by_variant = workload.generate_tasks(200, seed=2, variants=MIX)
    for t in by_variant:
        image = t["image_key"].endswith((".jpg", ".png"))
        assert image == workload.is_image_variant(t["variant"])
    assert all(t["image_key"].endswith(".txt")
               for t in workload.generate_tasks(50, seed=2, variants=MIX, images=False))
    assert all(t["image_key"].endswith((".jpg", ".png"))
               for t in workload.generate_tasks(50, seed=2, images=True))


def test_missing_fraction_puts_originals_under_missing():
    tasks = workload.generate_tasks(100, seed=4, duplicate_fraction=0.0, missing_fraction=0.1)
    assert sum(t["image_key"].startswith("missing/") for t in tasks) == 10


@pytest.mark.parametrize("kwargs, names", [
    ({"count": -1}, "count"),
    ({"count": 2.5}, "count"),
    ({"seed": "x"}, "seed"),
    ({"duplicate_fraction": 1.0}, "duplicate_fraction"),
    ({"duplicate_fraction": -0.1}, "duplicate_fraction"),
    ({"missing_fraction": float("nan")}, "missing_fraction"),
    ({"variants": {}}, "variants"),
    ({"variants": {"gzip": 0}}, "variants"),
    ({"variants": {"Bad-Name": 1}}, "Bad-Name"),
    ({"variants": {"gzip": -1}}, "gzip"),
    ({"images": "yes"}, "images"),
])
def test_generate_tasks_rejects_bad_arguments_naming_them(kwargs, names):
    args = {"count": 10, "seed": 1, **kwargs}
    with pytest.raises(ValueError, match=names):
        workload.generate_tasks(args.pop("count"), **args)


def test_parse_variants():
    assert workload.parse_variants("gzip=0.7, thumb_128=0.2,gray") == {
        "gzip": 0.7, "thumb_128": 0.2, "gray": 1.0}
    with pytest.raises(ValueError, match="gzip"):
        workload.parse_variants("gzip=lots")
    with pytest.raises(ValueError, match="variants"):
        workload.parse_variants("")


# -- create_sources ------------------------------------------------------------------

def test_sources_are_byte_identical_for_a_seed_and_differ_across_seeds(tmp_path):
    tasks = workload.generate_tasks(40, seed=9, variants=MIX)
    stores = [LocalObjectStore(tmp_path / name, fsync=False) for name in ("a", "b", "c")]
    created = [workload.create_sources(s, tasks, seed=seed) for s, seed in zip(stores, (9, 9, 10))]
    distinct = len({t["image_key"] for t in tasks})
    assert created == [distinct] * 3
    a, b, c = (_objects(s) for s in stores)
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_byte_sources_are_sized_within_range_and_compressible(store):
    tasks = workload.generate_tasks(30, seed=1, images=False)
    workload.create_sources(store, tasks, seed=1, source_size=(1000, 5000))
    for key, data in _objects(store).items():
        assert 1000 <= len(data) <= 5000, key
        assert len(gzip.compress(data)) < 0.6 * len(data)


def test_a_large_byte_source_is_written_exactly(store):
    workload.create_sources(store, [{"image_key": "big.txt"}], seed=1,
                            source_size=(200_000, 200_000))
    assert store.size("big.txt") == 200_000


def test_skip_prefix_keys_are_never_created(tmp_path):
    tasks = [{"id": "a", "image_key": "missing/x.txt", "variant": "gzip"},
             {"id": "b", "image_key": "src/y.txt", "variant": "gzip"},
             {"id": "c", "image_key": "gone/z.txt", "variant": "gzip"}]
    default, custom, none = (LocalObjectStore(tmp_path / n, fsync=False) for n in ("d", "c", "n"))
    assert workload.create_sources(default, tasks, seed=1) == 2
    assert sorted(_objects(default)) == ["gone/z.txt", "src/y.txt"]
    assert workload.create_sources(custom, tasks, seed=1, skip_prefix="gone/") == 2
    assert sorted(_objects(custom)) == ["missing/x.txt", "src/y.txt"]
    assert workload.create_sources(none, tasks, seed=1, skip_prefix=None) == 3


def test_create_sources_is_idempotent_and_leaves_existing_objects_alone(store):
    tasks = workload.generate_tasks(20, seed=3)
    assert workload.create_sources(store, tasks, seed=3) == 18  # 2 duplicates share keys
    before = _objects(store)
    store.write(tasks[0]["image_key"], [b"mine"])
    assert workload.create_sources(store, tasks, seed=3) == 0
    after = _objects(store)
    assert after.pop(tasks[0]["image_key"]) == b"mine"
    before.pop(tasks[0]["image_key"])
    assert after == before


def test_create_sources_accepts_tasks_and_skips_items_without_a_valid_key(store):
    items = [Task("t1", "src/a.txt", "gzip"), {"id": "t2"}, {"image_key": "../escape.txt"},
             {"image_key": 42}, "not a task"]
    assert workload.create_sources(store, items, seed=1) == 1
    assert list(_objects(store)) == ["src/a.txt"]


@pytest.mark.parametrize("kwargs, name", [
    ({"source_size": (10, 5)}, "source_size"),
    ({"source_size": (-1, 5)}, "source_size"),
    ({"source_size": 100}, "source_size"),
    ({"image_size": (0, 10)}, "image_size"),
    ({"seed": None}, "seed"),
    ({"skip_prefix": 3}, "skip_prefix"),
    ({"images": 1}, "images"),
])
def test_create_sources_rejects_bad_arguments_naming_them(store, kwargs, name):
    args = {"seed": 1, **kwargs}
    with pytest.raises(ValueError, match=name):
        workload.create_sources(store, [{"image_key": "a.txt"}], **args)
    assert not store.exists("a.txt")


def test_without_pillow_image_keys_get_bytes_only_when_asked_and_images_true_refuses(store, monkeypatch):
    monkeypatch.setattr(workload, "Image", None)
    with pytest.raises(DependencyMissing, match="Pillow"):
        workload.create_sources(store, [{"image_key": "a.jpg"}], seed=1, images=True)
    assert workload.create_sources(store, [{"image_key": "a.jpg"}], seed=1) == 0  # see the next test
    assert workload.create_sources(store, [{"image_key": "a.jpg"}], seed=1, images=False) == 1
    assert b"JFIF" not in store.open_read("a.jpg").read(64)


def test_image_sources_are_real_deterministic_images(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    items = [{"image_key": "p/a.jpg"}, {"image_key": "p/b.png"}]
    stores = [LocalObjectStore(tmp_path / n, fsync=False) for n in ("x", "y")]
    for s in stores:
        workload.create_sources(s, items, seed=5, image_size=(64, 200))
    assert _objects(stores[0]) == _objects(stores[1])
    for key, fmt in (("p/a.jpg", "JPEG"), ("p/b.png", "PNG")):
        with stores[0].open_read(key) as f:
            image = Image.open(io.BytesIO(f.read()))
        assert image.format == fmt
        assert all(64 <= side <= 200 for side in image.size)
    assert workload.create_sources(stores[0], items, seed=5, images=False) == 0


def test_images_false_gives_byte_content_for_image_keys(store):
    workload.create_sources(store, [{"image_key": "a.jpg"}], seed=1, images=False,
                            source_size=(100, 100))
    assert store.size("a.jpg") == 100


# -- the sample task file --------------------------------------------------------------

def test_sample_task_file_shows_each_case(store):
    items = json.loads(SAMPLE.read_text(encoding="utf-8"))
    assert 5 <= len(items) <= 10
    tasks = [Task.from_dict(item) for item in items]
    assert len({t.id for t in tasks}) == len(tasks)
    assert len({t.idempotency_key for t in tasks}) < len(tasks)  # a duplicate
    workload.create_sources(store, items, seed=42)
    processor = Processor(store)
    outcomes = {}
    for task in tasks:
        try:
            processor.process(task)
            outcomes[task.id] = "ok"
        except Exception as exc:  # noqa: BLE001 - recording the outcome is the point
            outcomes[task.id] = type(exc)
    assert outcomes["sample-01-gzip"] == outcomes["sample-03-duplicate-of-01"] == "ok"
    assert outcomes["sample-02-gzip-level9"] == "ok"
    assert outcomes["sample-06-bad-variant"] is UnknownVariant
    assert outcomes["sample-07-bad-level"] is InvalidParameter
    assert outcomes["sample-08-missing-source"] is SourceMissing
    image_outcome = "ok" if workload.Image is not None else DependencyMissing
    assert outcomes["sample-04-thumb"] == outcomes["sample-05-gray"] == image_outcome
    assert os.path.isfile(store.path_for("variants/gzip/src/sample/readme.txt.gz"))


def test_sources_whose_keys_clash_as_file_and_directory_make_the_others_and_skip_the_clash(tmp_path):
    """Found by a review: keys ``photos/a`` and ``photos/a/b`` (one a file where the other needs a
    directory) ended ``run --make-sources`` with a traceback, the sources after them never made. Each
    that cannot be made is skipped (its task then finds its source missing); the rest are made."""
    store = LocalObjectStore(tmp_path / "s", fsync=False)
    tasks = [{"image_key": "photos/a"}, {"image_key": "photos/a/b"}, {"image_key": "photos/c"}]
    assert workload.create_sources(store, tasks, seed=1, images=False) == 2
    assert store.exists("photos/a") and store.exists("photos/c") and not store.exists("photos/a/b")


def test_without_pillow_image_sources_are_not_made_as_text_under_an_image_name(tmp_path, monkeypatch):
    """Found in review: without Pillow, photo.jpg was made as text; once Pillow was installed its task
    failed for good (UnsupportedSource), and --make-sources never replaced it. Not made, it is made
    as an image by the first --make-sources with Pillow."""
    from taskqueue import workload

    store = LocalObjectStore(tmp_path / "store", fsync=False)
    tasks = [{"id": "a", "image_key": "src/photo.jpg", "variant": "thumb_64"},
             {"id": "b", "image_key": "src/notes.txt", "variant": "gzip"}]
    monkeypatch.setattr(workload, "Image", None)
    assert workload.create_sources(store, tasks, seed=1) == 1
    assert not store.exists("src/photo.jpg") and store.exists("src/notes.txt")
    assert workload.create_sources(store, tasks, seed=1, images=False) == 1  # asked for: text everywhere
    monkeypatch.undo()
    store2 = LocalObjectStore(tmp_path / "store2", fsync=False)
    monkeypatch.setattr(workload, "Image", None)
    workload.create_sources(store2, tasks, seed=1)
    monkeypatch.undo()
    assert workload.create_sources(store2, tasks, seed=1) == 1  # with Pillow: the image, at last
    assert store2.open_read("src/photo.jpg").read(3) == b"\xff\xd8\xff"  # a JPEG
