"""The Processor: variants, validation without I/O, deterministic faults, timeouts on an injected clock."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest

import taskqueue.imaging as imaging_module
from taskqueue.errors import (DependencyMissing, InjectedPermanentError, InjectedTransientError,
                              InvalidParameter, PermanentError, ProcessingTimeout, SourceMissing,
                              TransientError, UnknownVariant, UnsupportedSource)
from taskqueue.objectstore import LocalObjectStore, validate_key
from taskqueue.processor import MAX_THUMB_SIZE, FaultConfig, Output, Processor
from taskqueue.task import Task

try:
    from PIL import Image
except ImportError:  # the gzip variant and fault injection are still tested
    Image = None

needs_pillow = pytest.mark.skipif(Image is None, reason="Pillow is not installed")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def task(variant="gzip", image_key="src/a.bin", **params):
    return Task(id="t1", image_key=image_key, variant=variant, params=params)


def read(store, key):
    return b"".join(store.read_chunks(key))


class NoIO:
    """A stand-in store that fails the test on any use."""

    def __getattr__(self, name):
        raise AssertionError(f"check() touched the store ({name})")


def never_sleep(seconds):
    raise AssertionError(f"unexpected sleep({seconds})")


@pytest.fixture
def source(store):
    """A compressible 200 KB source at src/a.bin."""
    data = b"".join(b"line %06d of the source object\n" % i for i in range(6000))
    store.write("src/a.bin", [data])
    return data


# -- gzip ------------------------------------------------------------------------------------------

def test_gzip_round_trips_and_reports_key_and_size(store, source):
    out = Processor(store, sleep=never_sleep).process(task())
    assert out == Output(key="variants/gzip/src/a.bin.gz", size=store.size("variants/gzip/src/a.bin.gz"))
    compressed = read(store, out.key)
    assert gzip.decompress(compressed) == source
    assert len(compressed) < len(source) // 3


def test_gzip_output_is_byte_identical_across_runs_and_instances(store, source):
    first = read(store, Processor(store).process(task()).key)
    again = read(store, Processor(store).process(task()).key)
    shared = Processor(store)
    third = read(store, shared.process(task(), attempt=2).key)
    assert first == again == third


def test_gzip_header_has_no_name_and_no_mtime(store, source):
    data = read(store, Processor(store).process(task()).key)
    assert data[:3] == b"\x1f\x8b\x08"
    assert data[3] == 0  # FLG: no file name, comment or extra field
    assert data[4:8] == b"\x00\x00\x00\x00"  # MTIME 0


@pytest.mark.parametrize("level", range(10))
def test_every_gzip_level_round_trips(store, source, level):
    out = Processor(store).process(task(level=level))
    assert gzip.decompress(read(store, out.key)) == source


def test_gzip_level_changes_the_output(store, source):
    stored = read(store, Processor(store).process(task(level=0)).key)
    best = read(store, Processor(store).process(task(level=9)).key)
    assert len(stored) > len(source) > len(best)


def test_gzip_of_an_empty_source(store):
    store.write("empty", [])
    out = Processor(store).process(task(image_key="empty"))
    assert gzip.decompress(read(store, out.key)) == b""


def test_gzip_streams_the_source_in_chunks(store_root, monkeypatch):
    store = LocalObjectStore(store_root, chunk_size=64 * 1024)
    data = os.urandom(1024 * 1024)
    store.write("big", [data])
    seen = []
    real = store.read_chunks

    def spy(key, chunk_size=None):
        for chunk in real(key, chunk_size):
            seen.append(len(chunk))
            yield chunk

    monkeypatch.setattr(store, "read_chunks", spy)
    out = Processor(store).process(task(image_key="big"))
    assert seen == [64 * 1024] * 16
    assert gzip.decompress(read(store, out.key)) == data


def test_rerun_rewrites_the_same_object(store, source):
    p = Processor(store)
    p.process(task())
    p.process(task())
    assert sorted(os.listdir(os.path.join(store.root, "variants", "gzip", "src"))) == ["a.bin.gz"]


# -- output keys -----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant, image_key, expected", [
    ("gzip", "a.txt", "variants/gzip/a.txt.gz"),
    ("gzip", "dir/sub/a:b", "variants/gzip/dir/sub/a:b.gz"),
    ("gray", "img/x.png", "variants/gray/img/x.png.jpg"),
    ("thumb_128", "img/x.png", "variants/thumb_128/img/x.png.jpg"),
    ("thumb_4096", "x", "variants/thumb_4096/x.jpg"),
])
def test_output_key_derivation(variant, image_key, expected):
    t = task(variant, image_key)
    assert Processor.output_key(t) == expected
    assert Processor(NoIO()).output_key(t) == expected


def test_output_keys_differ_across_variants_and_sources():
    keys = {Processor.output_key(task(v, k)) for v in ("gzip", "gray", "thumb_1", "thumb_10")
            for k in ("a", "a.gz", "b/a", "ab:gzip")}
    assert len(keys) == 16


@pytest.mark.parametrize("image_key", ["s" * 199, "/".join(["k" * 100] * 5) + "/" + "z" * 7],
                         ids=["segment-too-long-with-suffix", "key-too-long-with-prefix"])
def test_a_source_key_whose_output_key_would_be_invalid_is_refused_at_check_time(image_key):
    """Valid as a source key, but ``variants/gzip/<key>.gz`` would break the key limits."""
    validate_key(image_key)
    with pytest.raises(InvalidParameter, match="field 'image_key'.*output key"):
        Processor(NoIO()).check(task("gzip", image_key))


@pytest.mark.parametrize("image_key", ["s" * 197, "/".join(["k" * 100] * 4) + "/" + "z" * 90],
                         ids=["longest-segment", "long-key"])
def test_a_checked_task_has_a_valid_output_key(image_key):
    t = task("gzip", image_key)
    Processor(NoIO()).check(t)
    assert validate_key(Processor.output_key(t)) == Processor.output_key(t)


# -- images ----------------------------------------------------------------------------------------

@needs_pillow
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("size, source_dims, expected", [
    (128, (300, 200), (128, 85)),
    (64, (90, 240), (24, 64)),
    (100, (100, 100), (100, 100)),
    (500, (300, 200), (300, 200)),  # never upscaled: "at most N"
])
def test_thumb_longest_side_is_n(store, make_image, fmt, size, source_dims, expected):
    store.write("img/src", [make_image(*source_dims, format=fmt)])
    out = Processor(store).process(task(f"thumb_{size}", "img/src"))
    assert out.key == f"variants/thumb_{size}/img/src.jpg"
    with Image.open(io.BytesIO(read(store, out.key))) as im:
        assert im.format == "JPEG"
        assert im.mode == "RGB"
        assert max(im.size) == min(size, max(source_dims))
        assert abs(im.size[0] - expected[0]) <= 1 and abs(im.size[1] - expected[1]) <= 1
    assert out.size == store.size(out.key)


@needs_pillow
def test_thumb_and_gray_are_deterministic(store, make_image):
    store.write("img/src", [make_image(320, 240)])
    for variant in ("thumb_100", "gray"):
        first = read(store, Processor(store).process(task(variant, "img/src")).key)
        second = read(store, Processor(store).process(task(variant, "img/src")).key)
        assert first == second


@needs_pillow
def test_quality_changes_the_jpeg(store, make_image):
    store.write("img/src", [make_image(320, 240)])
    low = read(store, Processor(store).process(task("thumb_200", "img/src", quality=5)).key)
    high = read(store, Processor(store).process(task("thumb_200", "img/src", quality=95)).key)
    assert len(low) < len(high)


@needs_pillow
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "CMYK"])
def test_gray_is_mode_l_at_full_size(store, make_image, mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    store.write("img/src", [make_image(70, 50, format=fmt, mode=mode)])
    out = Processor(store).process(task("gray", "img/src"))
    with Image.open(io.BytesIO(read(store, out.key))) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "L", (70, 50))


@needs_pillow
@pytest.mark.parametrize("variant", ["thumb_64", "gray"])
@pytest.mark.parametrize("payload", [b"", b"this is not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40],
                         ids=["empty", "text", "bad-png"])
def test_non_image_source_is_unsupported(store, variant, payload):
    store.write("img/bad", [payload])
    with pytest.raises(UnsupportedSource, match="'img/bad'") as info:
        Processor(store).process(task(variant, "img/bad"))
    assert isinstance(info.value, PermanentError)
    assert not store.exists(Processor.output_key(task(variant, "img/bad")))


@needs_pillow
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_unsupported(store, make_image, fmt):
    data = make_image(200, 200, format=fmt)
    store.write("img/cut", [data[: len(data) // 2]])
    with pytest.raises(UnsupportedSource):
        Processor(store).process(task("gray", "img/cut"))
    assert not store.exists("variants/gray/img/cut.jpg")


@pytest.mark.parametrize("variant", ["thumb_64", "gray"])
def test_pillow_absent_is_dependency_missing(store, monkeypatch, variant):
    # Runs with or without Pillow installed: the check comes before any decoding.
    store.write("img/src", [b"\x89PNG\r\n\x1a\n never decoded"])
    monkeypatch.setattr(imaging_module, "Image", None)
    p = Processor(store)
    p.check(task(variant, "img/src"))  # still a valid task; it just cannot be made here
    with pytest.raises(DependencyMissing, match="Pillow") as info:
        p.process(task(variant, "img/src"))
    assert isinstance(info.value, PermanentError)
    store.write("src/a.bin", [b"gzip needs no Pillow"])
    assert gzip.decompress(read(store, p.process(task()).key)) == b"gzip needs no Pillow"


# -- invalid variants and parameters: check() and process() agree, check() does no I/O --------------

INVALID = [
    ("thumb_0", {}, InvalidParameter),
    ("thumb_5000", {}, InvalidParameter),
    ("thumb_4097", {}, InvalidParameter),
    ("thumb_99999", {}, InvalidParameter),
    ("thumb_0128", {}, InvalidParameter),
    ("thumb_", {}, InvalidParameter),
    ("thumb_x", {}, InvalidParameter),
    ("sepia", {}, UnknownVariant),
    ("thumbnail", {}, UnknownVariant),
    ("gzip2", {}, UnknownVariant),
    ("gzip", {"level": 10}, InvalidParameter),
    ("gzip", {"level": -1}, InvalidParameter),
    ("gzip", {"level": "6"}, InvalidParameter),
    ("gzip", {"level": 6.0}, InvalidParameter),
    ("gzip", {"level": True}, InvalidParameter),
    ("gzip", {"level": None}, InvalidParameter),
    ("gzip", {"quality": 80}, InvalidParameter),
    ("gzip", {"lvl": 5}, InvalidParameter),
    ("thumb_64", {"quality": 0}, InvalidParameter),
    ("thumb_64", {"quality": 96}, InvalidParameter),
    ("thumb_64", {"level": 5}, InvalidParameter),
    ("gray", {"quality": 50.5}, InvalidParameter),
    ("gray", {"size": 10}, InvalidParameter),
]


@pytest.mark.parametrize("variant, params, error", INVALID,
                         ids=[f"{v}-{json.dumps(p)}" for v, p, _ in INVALID])
def test_invalid_variant_or_parameter_is_refused_by_check_and_process(store, variant, params, error):
    t = task(variant, **params)
    with pytest.raises(error) as checked:
        Processor(NoIO()).check(t)
    assert isinstance(checked.value, PermanentError)
    assert "field '" in str(checked.value)  # names the field: 'variant' or 'params.<name>'
    with pytest.raises(error):
        Processor(NoIO()).output_key(t)
    store.write("src/a.bin", [b"data"])
    with pytest.raises(error) as processed:
        Processor(store, sleep=never_sleep).process(t)
    assert str(processed.value) == str(checked.value)
    assert not os.path.exists(os.path.join(store.root, "variants"))


@pytest.mark.parametrize("variant, params", [
    ("gzip", {}), ("gzip", {"level": 0}), ("gzip", {"level": 9}), ("gray", {"quality": 1}),
    ("thumb_1", {}), (f"thumb_{MAX_THUMB_SIZE}", {"quality": 95}),
])
def test_valid_variants_pass_check_without_io(variant, params):
    Processor(NoIO()).check(task(variant, **params))


@pytest.mark.parametrize("variant", ["gzip", pytest.param("thumb_64", marks=needs_pillow),
                                     pytest.param("gray", marks=needs_pillow)])
def test_missing_source_is_source_missing_and_writes_nothing(store, variant):
    with pytest.raises(SourceMissing, match="'src/none'"):
        Processor(store).process(task(variant, "src/none"))
    assert os.listdir(store.root) == []


# -- FaultConfig -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, field", [
    ({"latency_s": -0.1}, "latency_s"),
    ({"latency_s": float("inf")}, "latency_s"),
    ({"latency_s": float("nan")}, "latency_s"),
    ({"latency_s": "1"}, "latency_s"),
    ({"jitter_s": -1}, "jitter_s"),
    ({"transient_rate": 1.1}, "transient_rate"),
    ({"transient_rate": -0.01}, "transient_rate"),
    ({"transient_rate": float("nan")}, "transient_rate"),
    ({"permanent_rate": 2}, "permanent_rate"),
    ({"permanent_rate": "0.5"}, "permanent_rate"),
    ({"transient_rate": 0.6, "permanent_rate": 0.5}, "transient_rate + permanent_rate"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"timeout_s": -1}, "timeout_s"),
    ({"timeout_s": float("inf")}, "timeout_s"),
    ({"timeout_s": "5"}, "timeout_s"),
])
def test_fault_config_is_validated(kwargs, field):
    with pytest.raises(ValueError, match=field.replace("+", r"\+")):
        FaultConfig(**kwargs)


def test_fault_config_defaults_are_inactive():
    assert FaultConfig().active is False
    for kwargs in ({"latency_s": 0.1}, {"jitter_s": 0.1}, {"transient_rate": 0.1},
                   {"permanent_rate": 0.1}, {"timeout_s": 1}):
        assert FaultConfig(**kwargs).active is True
    assert FaultConfig(transient_rate=0.5, permanent_rate=0.5).active


def test_decide_is_deterministic_per_seed_key_and_attempt():
    faults = FaultConfig(jitter_s=1.0, transient_rate=0.3, permanent_rate=0.2, seed=7)
    again = FaultConfig(jitter_s=1.0, transient_rate=0.3, permanent_rate=0.2, seed=7)
    keys = [f"img/{i}.png:gzip" for i in range(200)]
    first = [faults.decide(k, a) for k in keys for a in (1, 2, 3)]
    assert first == [again.decide(k, a) for k in keys for a in (1, 2, 3)]
    assert first == [faults.decide(k, a) for k in keys for a in (1, 2, 3)]
    other_seed = FaultConfig(jitter_s=1.0, transient_rate=0.3, permanent_rate=0.2, seed=8)
    assert first != [other_seed.decide(k, a) for k in keys for a in (1, 2, 3)]


def test_decide_is_the_same_in_another_process_with_another_hash_seed():
    faults = FaultConfig(jitter_s=0.5, transient_rate=0.3, permanent_rate=0.2, seed=42)
    keys = [f"k/{i}:thumb_64" for i in range(50)]
    here = [list(faults.decide(k, 2)) for k in keys]
    code = textwrap.dedent(f"""
        import json
        from taskqueue.processor import FaultConfig
        f = FaultConfig(jitter_s=0.5, transient_rate=0.3, permanent_rate=0.2, seed=42)
        print(json.dumps([list(f.decide(k, 2)) for k in {keys!r}]))
    """)
    env = dict(os.environ, PYTHONHASHSEED="12345")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=60, check=True)
    assert json.loads(result.stdout) == here


def test_decide_differs_across_attempts():
    faults = FaultConfig(jitter_s=1.0, transient_rate=0.5, seed=3)
    decisions = [faults.decide("img/a.png:gzip", attempt) for attempt in range(1, 41)]
    assert {fault for _, fault in decisions} == {None, "transient"}
    assert len({latency for latency, _ in decisions}) == 40


def test_decide_latency_is_latency_plus_bounded_jitter():
    faults = FaultConfig(latency_s=0.5, jitter_s=0.25, seed=1)
    latencies = [faults.decide(f"k{i}:gzip", 1)[0] for i in range(2000)]
    assert all(0.5 <= x <= 0.75 for x in latencies)
    assert abs(sum(latencies) / len(latencies) - 0.625) < 0.01
    assert FaultConfig(latency_s=0.5).decide("k:gzip", 1) == (0.5, None)


@pytest.mark.parametrize("transient, permanent", [(0.2, 0.1), (0.05, 0.0), (0.0, 0.3), (0.5, 0.5)])
def test_observed_fault_rates_match_the_configuration(transient, permanent):
    faults = FaultConfig(transient_rate=transient, permanent_rate=permanent, seed=11)
    n = 10_000
    outcomes = [faults.decide(f"img/{i:05d}.png:thumb_128", 1)[1] for i in range(n)]
    tolerance = 0.02  # about 5 standard deviations at n = 10,000
    assert abs(outcomes.count("transient") / n - transient) < tolerance
    assert abs(outcomes.count("permanent") / n - permanent) < tolerance
    if transient == 0:
        assert "transient" not in outcomes
    if permanent == 0:
        assert "permanent" not in outcomes


def test_certain_faults_always_fire():
    assert {FaultConfig(transient_rate=1.0).decide(f"k{i}:gzip", 1)[1] for i in range(100)} == {"transient"}
    assert {FaultConfig(permanent_rate=1.0).decide(f"k{i}:gzip", 1)[1] for i in range(100)} == {"permanent"}


# -- injected faults through process() ---------------------------------------------------------------

@pytest.mark.parametrize("faults, error, kind", [
    (FaultConfig(transient_rate=1.0), InjectedTransientError, TransientError),
    (FaultConfig(permanent_rate=1.0), InjectedPermanentError, PermanentError),
])
def test_injected_fault_raises_and_publishes_nothing(store, source, faults, error, kind):
    with pytest.raises(error, match="attempt 3") as info:
        Processor(store, faults, sleep=never_sleep).process(task(), attempt=3)
    assert isinstance(info.value, kind)
    assert not store.exists("variants/gzip/src/a.bin.gz")


def test_process_follows_decide_attempt_by_attempt(store, source, fake_clock):
    faults = FaultConfig(transient_rate=0.5, seed=5)
    p = Processor(store, faults, sleep=fake_clock.sleep, clock=fake_clock)
    t = task()
    for attempt in range(1, 21):
        _, fault = faults.decide(t.idempotency_key, attempt)
        if fault == "transient":
            with pytest.raises(InjectedTransientError):
                p.process(t, attempt)
        else:
            assert p.process(t, attempt).key == "variants/gzip/src/a.bin.gz"


def test_injected_latency_is_passed_to_sleep_exactly(store, source, fake_clock):
    faults = FaultConfig(latency_s=0.3, jitter_s=0.2, seed=9)
    p = Processor(store, faults, sleep=fake_clock.sleep, clock=fake_clock)
    t = task()
    p.process(t, attempt=1)
    p.process(t, attempt=2)
    assert fake_clock.sleeps == [faults.decide(t.idempotency_key, 1)[0], faults.decide(t.idempotency_key, 2)[0]]
    assert fake_clock.sleeps[0] != fake_clock.sleeps[1]


def test_fixed_latency_is_slept_exactly(store, source, fake_clock):
    Processor(store, FaultConfig(latency_s=0.125), sleep=fake_clock.sleep, clock=fake_clock).process(task())
    assert fake_clock.sleeps == [0.125]


def test_no_faults_means_no_sleep(store, source):
    Processor(store, sleep=never_sleep).process(task())
    Processor(store, FaultConfig(), sleep=never_sleep).process(task())


# -- timeouts ----------------------------------------------------------------------------------------

def test_latency_over_the_timeout_sleeps_exactly_the_timeout_then_times_out(store, source, fake_clock):
    faults = FaultConfig(latency_s=5.0, timeout_s=1.5)
    with pytest.raises(ProcessingTimeout) as info:
        Processor(store, faults, sleep=fake_clock.sleep, clock=fake_clock).process(task())
    assert isinstance(info.value, TransientError)
    assert fake_clock.sleeps == [1.5]
    assert os.listdir(store.root) == ["src"]


def test_timeout_wins_over_an_injected_permanent_fault(store, source, fake_clock):
    faults = FaultConfig(latency_s=5.0, timeout_s=1.0, permanent_rate=1.0)
    with pytest.raises(ProcessingTimeout):
        Processor(store, faults, sleep=fake_clock.sleep, clock=fake_clock).process(task())


def test_latency_within_the_timeout_is_slept_and_the_task_succeeds(store, source, fake_clock):
    faults = FaultConfig(latency_s=0.5, timeout_s=1.0)
    out = Processor(store, faults, sleep=fake_clock.sleep, clock=fake_clock).process(task())
    assert fake_clock.sleeps == [0.5]
    assert gzip.decompress(read(store, out.key)) == source


def test_slow_chunk_stream_past_the_deadline_times_out_and_publishes_nothing(store_root, fake_clock):
    store = LocalObjectStore(store_root, chunk_size=1024)
    store.write("src/a.bin", [os.urandom(20 * 1024)])
    store.write("variants/gzip/src/a.bin.gz", [b"previous output"])
    fake_clock.step = 0.3  # every clock reading is 0.3 s after the previous one
    p = Processor(store, FaultConfig(timeout_s=1.0), sleep=never_sleep, clock=fake_clock)
    with pytest.raises(ProcessingTimeout, match="timeout") as info:
        p.process(task())
    assert isinstance(info.value, TransientError)
    # start at 0, chunk checks at 0.3, 0.6, 0.9, then 1.2 > 1.0: it stops long before the 20th chunk.
    assert fake_clock.reads < 10
    assert read(store, "variants/gzip/src/a.bin.gz") == b"previous output"
    assert store.temp_files() == []


def test_injected_latency_counts_against_the_timeout(store_root, fake_clock):
    store = LocalObjectStore(store_root, chunk_size=1024)
    store.write("src/a.bin", [os.urandom(20 * 1024)])
    fake_clock.step = 0.1
    p = Processor(store, FaultConfig(latency_s=0.7, timeout_s=1.0), sleep=fake_clock.sleep, clock=fake_clock)
    with pytest.raises(ProcessingTimeout):
        p.process(task())
    assert fake_clock.sleeps == [0.7]
    assert not store.exists("variants/gzip/src/a.bin.gz")


def test_a_fast_stream_under_a_timeout_succeeds(store, source, fake_clock):
    p = Processor(store, FaultConfig(timeout_s=1.0), sleep=never_sleep, clock=fake_clock)
    assert gzip.decompress(read(store, p.process(task()).key)) == source


@needs_pillow
@pytest.mark.parametrize("variant", ["gray", "thumb_32"])
def test_slow_image_decode_past_the_deadline_times_out(store, make_image, fake_clock, variant):
    store.write("img/src", [make_image(64, 64)])
    fake_clock.step = 2.0
    p = Processor(store, FaultConfig(timeout_s=1.0), sleep=never_sleep, clock=fake_clock)
    with pytest.raises(ProcessingTimeout):
        p.process(task(variant, "img/src"))
    assert not store.exists(Processor.output_key(task(variant, "img/src")))



class FlakyReader(io.BytesIO):
    """A source file whose reads fail the way a briefly unavailable disk or network mount does."""

    def read(self, *args):
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    readinto = read


@needs_pillow
def test_a_transient_read_error_while_decoding_is_not_a_permanent_failure(store, make_image, monkeypatch):
    store.write("img/src", [make_image(32, 32)])
    monkeypatch.setattr(store, "open_read", lambda key: FlakyReader(b"irrelevant"))
    with pytest.raises(Exception) as info:
        Processor(store).process(task("gray", "img/src"))
    assert not isinstance(info.value, PermanentError)


@pytest.mark.parametrize("key", ["variants", "variants/gzip/a.txt", "variants/x"])
def test_a_source_key_that_is_or_is_under_the_outputs_directory_is_refused(key):
    """Found by a review: only keys under ``variants/`` were refused, so a source made at ``variants``
    itself (``--make-sources``) was a file where every output's directory must go: every task failed."""
    with pytest.raises(InvalidParameter, match="reserved for outputs"):
        Processor.check(task("gzip", key))
