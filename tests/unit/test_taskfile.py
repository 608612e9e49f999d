"""Loading a task file as hostile input: one test per way a file or an item can be wrong.

Each test feeds the loader the bad input its guard exists for, and asserts on
the specific refusal (the message, the field, the index), so that it fails
if the guard goes: a looser assertion would often still pass on some later,
unrelated refusal. Item-level cases run in ``dead-letter`` mode, where a
guard that goes missing shows up as an item that loads.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import sys
import threading
import types
from pathlib import Path

import pytest

from taskqueue import strictjson, taskfile
from taskqueue.errors import InvalidParameter, InvalidTask, UnknownVariant
from taskqueue.objectstore import LocalObjectStore
from taskqueue.processor import Processor
from taskqueue.task import Task
from taskqueue.taskfile import (MAX_INT_DIGITS, MAX_MESSAGE_CHARS, MAX_NESTING,
                                MAX_REPORTED_ERRORS, InvalidItem, ItemError, LoadedTasks,
                                TaskFileError, load_tasks)

LIMIT = 1024 * 1024


def item(id: str = "t1", image_key: str = "img/a.jpg", variant: str = "gzip", **extra) -> dict:
    return {"id": id, "image_key": image_key, "variant": variant, **extra}


def write(tmp_path: Path, content, name: str = "tasks.json") -> Path:
    """Write ``content`` (JSON-able value, str or bytes) as the task file; return its path."""
    if not isinstance(content, (str, bytes)):
        content = json.dumps(content)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path = tmp_path / name
    path.write_bytes(content)
    return path


def load(path, **kwargs) -> LoadedTasks:
    kwargs.setdefault("max_bytes", LIMIT)
    return load_tasks(path, **kwargs)


def refused(path, **kwargs) -> TaskFileError:
    with pytest.raises(TaskFileError) as info:
        load(path, **kwargs)
    assert str(info.value).startswith(f"{path}: ")
    return info.value


def refused_in_any_mode(path, **kwargs) -> TaskFileError:
    """A file-level refusal: dead-letter mode must not turn it into an invalid item."""
    refused(path, **kwargs)
    return refused(path, on_invalid="dead-letter", **kwargs)


def the_invalid_item(path, **kwargs) -> InvalidItem:
    result = load(path, on_invalid="dead-letter", **kwargs)
    assert len(result.invalid) == 1, result.invalid
    return result.invalid[0]


@pytest.fixture
def processor(tmp_path: Path) -> Processor:
    return Processor(LocalObjectStore(tmp_path / "store"))


# -- good files ----------------------------------------------------------------------

@pytest.mark.parametrize("on_invalid", ["reject", "dead-letter"])
def test_valid_file_loads_every_task_in_file_order(tmp_path, processor, on_invalid):
    items = [item("a", variant="gzip", params={"level": 9}), item("b", variant="thumb_128"),
             item("c", image_key="img/café.jpg", variant="gray", params={"quality": 50})]
    result = load(write(tmp_path, items), check=processor.check, on_invalid=on_invalid)
    assert result == LoadedTasks(tasks=[Task.from_dict(i) for i in items], invalid=[],
                                 duplicates_dropped=0)
    assert [t.params for t in result.tasks] == [{"level": 9}, {}, {"quality": 50}]
    assert result.tasks[2].image_key == "img/café.jpg"


def test_empty_array_loads_nothing(tmp_path):
    assert load(write(tmp_path, "[]")) == LoadedTasks(tasks=[], invalid=[], duplicates_dropped=0)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + json.dumps([item()]).encode())
    assert [t.id for t in load(path).tasks] == ["t1"]


def test_loading_writes_nothing(tmp_path, processor):
    path = write(tmp_path, [item("a"), item("b", variant="sepia")])

    def tree():
        return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))

    before = tree()
    load(path, check=processor.check, on_invalid="dead-letter")
    with pytest.raises(TaskFileError):
        load(path, check=processor.check)
    assert tree() == before


# -- the file as a whole --------------------------------------------------------------

def test_missing_file_is_refused(tmp_path):
    assert "no such file" in str(refused(tmp_path / "absent.json"))


def test_directory_is_refused(tmp_path):
    (tmp_path / "tasks.json").mkdir()
    assert "is a directory, not a task file" in str(refused(tmp_path / "tasks.json"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "tasks.json")
    assert "is not a regular file" in str(refused(tmp_path / "tasks.json"))


def test_file_over_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB on paper, nothing on disk

    def must_not_read(*args):
        raise AssertionError("the loader read a file that stat already showed to be too large")

    monkeypatch.setattr(taskfile, "read_limited", must_not_read)
    error = refused(path, max_bytes=1024)
    assert "is 1073741824 bytes, over the limit of 1024 bytes" in str(error)


def test_file_at_the_limit_is_read(tmp_path):
    text = json.dumps([item()])
    assert len(load(write(tmp_path, text), max_bytes=len(text)).tasks) == 1


class _StatSaysEmpty:
    """Stands in for ``os`` inside taskfile and strictjson, with stat and fstat reporting every file as 0 bytes.

    That is what a file that grows between the size check and the read looks
    like to the loader, and what /proc files always look like.
    """

    def __getattr__(self, name):
        return getattr(os, name)

    def stat(self, path):
        return types.SimpleNamespace(st_mode=os.stat(path).st_mode, st_size=0)

    def fstat(self, fd):
        return types.SimpleNamespace(st_mode=os.fstat(fd).st_mode, st_size=0)


def test_file_holding_more_than_the_limit_is_refused_whatever_stat_says(tmp_path, monkeypatch):
    path = write(tmp_path, [item(f"t{i}") for i in range(10)])
    assert path.stat().st_size > 200
    monkeypatch.setattr(taskfile, "os", _StatSaysEmpty())
    monkeypatch.setattr(strictjson, "os", _StatSaysEmpty())
    error = refused(path, max_bytes=200)
    assert "holds more than the limit of 200 bytes" in str(error)


class _CountingFile:
    """A binary file that counts the bytes read through it."""

    def __init__(self, f, counts: list) -> None:
        self._f, self._counts = f, counts

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def fileno(self):
        return self._f.fileno()

    def read(self, size=-1):
        data = self._f.read(size)
        self._counts.append(len(data))
        return data


def test_no_more_than_the_limit_plus_one_byte_is_read(tmp_path, monkeypatch):
    path = write(tmp_path, [item(f"t{i}") for i in range(2000)])  # about 100 kB
    counts: list = []
    monkeypatch.setattr(taskfile, "os", _StatSaysEmpty())
    monkeypatch.setattr(strictjson, "os", _StatSaysEmpty())
    monkeypatch.setattr(strictjson, "open", lambda *a, **k: _CountingFile(open(*a, **k), counts),
                        raising=False)
    refused(path, max_bytes=1000)
    assert sum(counts) == 1001


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_swapped_in_after_the_stat_does_not_block(tmp_path, monkeypatch):
    fifo = tmp_path / "tasks.json"
    os.mkfifo(fifo)

    class StatSaysRegular(_StatSaysEmpty):
        def stat(self, path):
            return types.SimpleNamespace(st_mode=0o100644, st_size=0)

    monkeypatch.setattr(taskfile, "os", StatSaysRegular())
    outcome: list = []

    def run():
        try:
            load(fifo)
        except TaskFileError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=run, daemon=True)
    reader.start()
    reader.join(timeout=10)  # guards against a hang only: the refusal needs no waiting
    if reader.is_alive():  # blocked opening the FIFO: give it a writer so the thread can end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=10)
        pytest.fail("opening a FIFO swapped in after the stat blocked, waiting for a writer")
    assert "is not a regular file" in str(outcome[0])


@pytest.mark.parametrize("data, bad_byte", [
    (b'[\n{"id": "caf\xe9"}]', 0xE9),              # Latin-1, not UTF-8
    (b'[\n{"id": "a\xff"}]', 0xFF),                 # never valid in UTF-8
    (b'[\n{"id": "\xc0\xaf"}]', 0xC0),              # overlong encoding of "/"
    (b'[\n{"id": "\xed\xa0\x80"}]', 0xED),          # an encoded surrogate
])
def test_invalid_utf8_is_refused_with_its_byte_offset(tmp_path, data, bad_byte):
    error = refused_in_any_mode(write(tmp_path, data))
    offset = data.index(bytes([bad_byte]))
    assert f"not valid UTF-8: byte 0x{bad_byte:02x} at byte offset {offset} (line 2)" in str(error)


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_file_is_refused(tmp_path, text):
    assert "is empty; expected a JSON array of tasks" in str(refused_in_any_mode(write(tmp_path, text)))


@pytest.mark.parametrize("text, line", [
    ('[\n  {"id": "a"},\n  {"id": "b",}\n]', 3),   # trailing comma
    ('[{"id": "a"}', 1),                            # unterminated
    ("[{'id': 'a'}]", 1),                           # single quotes
    ("[\n] []", 2),                                 # two documents
    ("[1]\n\n// comment", 3),                       # comments are not JSON
], ids=["trailing-comma", "unterminated", "single-quotes", "two-documents", "comment"])
def test_malformed_json_is_refused_with_line_and_column(tmp_path, text, line):
    error = refused_in_any_mode(write(tmp_path, text))
    # The column and the wording vary across Python versions (3.13 names trailing commas).
    assert re.search(rf": not valid JSON: .+ at line {line}, column [0-9]+$", str(error)), str(error)


@pytest.mark.parametrize("text, got", [
    ('{"tasks": []}', "got an object"), ('"tasks"', "got a string"), ("42", "got a number"),
    ("true", "got a boolean"), ("null", "got null"),
])
def test_top_level_must_be_an_array(tmp_path, text, got):
    error = refused_in_any_mode(write(tmp_path, text))
    assert f"expected a JSON array of tasks at the top level, {got}" in str(error)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(tmp_path, constant):
    text = '[{"id": "a", "image_key": "k", "variant": "gzip", "params": {"level": %s}}]' % constant
    assert f"{constant} is not a JSON number" in str(refused_in_any_mode(write(tmp_path, text)))


def test_number_that_overflows_a_float_is_refused(tmp_path):
    text = '[{"id": "a", "image_key": "k", "variant": "gzip", "params": {"level": 1e999}}]'
    assert "the number '1e999' is out of range" in str(refused_in_any_mode(write(tmp_path, text)))


@pytest.fixture(params=["default", "unlimited"])
def int_digit_limit(request):
    """Python's own limit on int digits as shipped, then switched off: the loader must not rely on it."""
    if request.param == "unlimited":
        if not hasattr(sys, "set_int_max_str_digits"):
            pytest.skip("this Python has no int digit limit to switch off")
        old = sys.get_int_max_str_digits()
        sys.set_int_max_str_digits(0)
        yield
        sys.set_int_max_str_digits(old)
    else:
        yield


@pytest.mark.parametrize("digits", [MAX_INT_DIGITS + 1, 10_000])
def test_integer_with_too_many_digits_is_refused(tmp_path, int_digit_limit, digits):
    text = '[{"id": "a", "image_key": "k", "variant": "gzip", "params": {"level": -%s}}]' % ("9" * digits)
    error = refused_in_any_mode(write(tmp_path, text))
    assert f"an integer of {digits} digits, at most {MAX_INT_DIGITS} accepted" in str(error)


def test_integer_of_the_longest_accepted_length_loads(tmp_path):
    big = int("9" * MAX_INT_DIGITS)
    (task,) = load(write(tmp_path, [item(params={"level": -big})])).tasks
    assert task.params == {"level": -big}


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("text", [
    _nested(200_000),                                        # past the interpreter's recursion limit
    _nested(MAX_NESTING + 1),                                # past the loader's own limit
    '[{"id": "a", "image_key": "k", "variant": "gzip", "params": {"x": %s}}]' % _nested(MAX_NESTING - 2),
], ids=["past-recursion-limit", "past-own-limit", "inside-an-item"])
def test_deep_nesting_is_refused(tmp_path, text):
    error = refused_in_any_mode(write(tmp_path, text))
    assert f"JSON nested more than {MAX_NESTING} levels deep" in str(error)


def test_nesting_at_the_limit_reaches_item_validation(tmp_path):
    invalid = the_invalid_item(write(tmp_path, _nested(MAX_NESTING)))
    assert invalid.error.message.startswith("item 0: a task must be a JSON object")


# -- one item at a time ---------------------------------------------------------------

@pytest.mark.parametrize("bad, shown", [(5, "5"), ("task", "'task'"), ([1, 2], "[1, 2]"),
                                        (None, "None"), (True, "True")])
def test_item_that_is_not_an_object_is_refused(tmp_path, bad, shown):
    invalid = the_invalid_item(write(tmp_path, [item("a"), bad]))
    assert invalid.index == 1 and invalid.raw is None
    assert invalid.error.field is None and invalid.error.value_repr == shown
    assert invalid.error.message.startswith("item 1: a task must be a JSON object, got ")


@pytest.mark.parametrize("field", ["id", "image_key", "variant"])
def test_missing_field_is_named(tmp_path, field):
    bad = item()
    del bad[field]
    error = the_invalid_item(write(tmp_path, [item("a"), item("b"), bad])).error
    assert (error.index, error.field, error.value_repr) == (2, field, None)
    assert error.message == f"item 2: field {field!r} is missing"


@pytest.mark.parametrize("field, value, shown", [
    ("id", 5, "5"), ("image_key", ["a"], "['a']"), ("variant", None, "None"),
    ("params", [1], "[1]"), ("id", "has space", "'has space'"),
    ("image_key", "../etc/passwd", "'../etc/passwd'"), ("variant", "Thumb", "'Thumb'"),
])
def test_wrong_field_is_named_with_its_value(tmp_path, field, value, shown):
    error = the_invalid_item(write(tmp_path, [item("a"), {**item("b"), field: value}])).error
    assert (error.index, error.field, error.value_repr) == (1, field, shown)
    assert error.message.startswith(f"item 1: field {field!r}: ") and shown in error.message


def test_unknown_field_is_named(tmp_path):
    error = the_invalid_item(write(tmp_path, [item(colour="red")])).error
    assert (error.field, error.value_repr) == ("colour", "'red'")
    assert error.message.startswith("item 0: unknown field 'colour'")


def test_unknown_variant_is_refused_by_the_check(tmp_path, processor):
    path = write(tmp_path, [item("a"), item("b", variant="sepia")])
    assert len(load(path).tasks) == 2  # the task model alone cannot know the variants
    error = the_invalid_item(path, check=processor.check).error
    assert (error.index, error.field, error.value_repr, error.kind) == (1, "variant", "'sepia'",
                                                                        UnknownVariant.__name__)
    assert error.message.startswith("item 1: field 'variant': unknown variant 'sepia'")


@pytest.mark.parametrize("variant", ["thumb_999999", "thumb_5000", "thumb_0"])
def test_absurd_thumbnail_size_is_refused(tmp_path, processor, variant):
    error = the_invalid_item(write(tmp_path, [item(variant=variant)]), check=processor.check).error
    assert (error.field, error.value_repr, error.kind) == ("variant", repr(variant),
                                                          InvalidParameter.__name__)
    assert error.message.startswith(f"item 0: field 'variant': {variant!r}")


def test_out_of_range_parameter_is_named(tmp_path, processor):
    error = the_invalid_item(write(tmp_path, [item(variant="gray", params={"quality": 500})]),
                             check=processor.check).error
    assert (error.field, error.value_repr) == ("params.quality", "500")
    assert error.message.startswith("item 0: field 'params.quality': 500 ")


def test_check_failing_otherwise_than_invalid_task_propagates(tmp_path):
    def broken(task):
        raise RuntimeError("bug in check")

    with pytest.raises(RuntimeError, match="bug in check"):
        load(write(tmp_path, [item()]), check=broken, on_invalid="dead-letter")


HUGE = "x" * 1_000_000


@pytest.mark.parametrize("bad", [
    item(id=HUGE), item(image_key=HUGE), item(variant=HUGE), item(params={"note": HUGE}),
    {**item(), HUGE: 1}, item(params={HUGE: 1}),
], ids=["id", "image_key", "variant", "param-value", "field-name", "param-name"])
def test_huge_strings_give_short_messages(tmp_path, bad):
    invalid = the_invalid_item(write(tmp_path, [bad]))
    assert len(invalid.error.message) <= MAX_MESSAGE_CHARS
    assert invalid.error.value_repr is None or len(invalid.error.value_repr) <= 80
    assert invalid.error.field is not None


def test_rejection_message_stays_short_however_many_huge_items(tmp_path):
    error = refused(write(tmp_path, [{**item(f"t{i}"), HUGE[:100_000]: 1} for i in range(50)]))
    assert len(str(error)) < (MAX_REPORTED_ERRORS + 3) * (MAX_MESSAGE_CHARS + 5)


@pytest.mark.parametrize("where, field", [("image_key", "image_key"), ("params", "params.note")])
def test_unpaired_surrogate_is_refused(tmp_path, where, field):
    value = '"img/\\ud800.jpg"'
    if where == "image_key":
        text = '[{"id": "a", "image_key": %s, "variant": "gzip"}]' % value
    else:
        text = '[{"id": "a", "image_key": "k", "variant": "gzip", "params": {"note": %s}}]' % value
    error = the_invalid_item(write(tmp_path, text)).error
    assert error.field == field and error.value_repr == "'img/\\ud800.jpg'"
    assert "unpaired surrogate" in error.message


def test_escaped_surrogate_pair_is_valid_unicode(tmp_path):
    text = '[{"id": "a", "image_key": "img/\\ud83d\\ude00.jpg", "variant": "gzip"}]'
    (task,) = load(write(tmp_path, text)).tasks
    assert task.image_key == "img/\U0001f600.jpg"


@pytest.mark.parametrize("text, field", [
    ('[{"id": "a", "image_key": "k", "variant": "gzip", "variant": "gray"}]', "variant"),
    ('[{"id": "a", "image_key": "k", "variant": "gzip", "params": {"level": 1, "level": 2}}]',
     "params.level"),
], ids=["field", "param"])
def test_key_repeated_in_an_object_is_refused(tmp_path, text, field):
    error = the_invalid_item(write(tmp_path, text)).error
    assert error.field == field
    assert error.message == f"item 0: field {field!r}: appears more than once in the object"


# -- duplicate ids ----------------------------------------------------------------------

@pytest.mark.parametrize("on_invalid", ["reject", "dead-letter"])
def test_identical_duplicate_is_dropped_and_counted(tmp_path, on_invalid):
    text = ('[{"id": "a", "image_key": "k", "variant": "gzip", "params": {"level": 1}},'
            ' {"id": "b", "image_key": "k", "variant": "gray"},'
            ' {"params": {"level": 1},   "variant": "gzip", "image_key": "k", "id": "a"}]')
    result = load(write(tmp_path, text), on_invalid=on_invalid)
    assert [t.id for t in result.tasks] == ["a", "b"]
    assert (result.invalid, result.duplicates_dropped) == ([], 1)


@pytest.mark.parametrize("second", [
    item("a", variant="gray"),                  # a different variant
    item("a", params={"level": 2}),             # only the params differ (Task equality ignores them)
    item("a", params={"level": 1.0}),           # 1 and 1.0 are equal in Python, not in the file
])
def test_duplicate_id_with_different_content_names_both_items(tmp_path, second):
    path = write(tmp_path, [item("a", params={"level": 1}), item("b"), second])
    error = refused(path)
    assert "item 2: field 'id': duplicate id 'a' with different content from item 0" in str(error)
    result = load(path, on_invalid="dead-letter")
    assert [t.id for t in result.tasks] == ["a", "b"] and result.tasks[0].params == {"level": 1}
    assert [(i.index, i.error.field, i.raw) for i in result.invalid] == [(2, "id", second)]


# -- the two modes -----------------------------------------------------------------

def test_reject_lists_the_first_errors_and_the_total(tmp_path):
    items = [item("good")] + [item(f"bad{i}", variant="Bad") for i in range(MAX_REPORTED_ERRORS + 5)]
    error = refused(write(tmp_path, items))
    message = str(error)
    assert f"{MAX_REPORTED_ERRORS + 5} invalid items (indexes are 0-based); no task was loaded" in message
    assert f"item {MAX_REPORTED_ERRORS}: field 'variant'" in message
    assert f"item {MAX_REPORTED_ERRORS + 1}:" not in message
    assert message.endswith("... and 5 more")
    assert error.error_count == MAX_REPORTED_ERRORS + 5
    assert [e.index for e in error.errors] == list(range(1, MAX_REPORTED_ERRORS + 1))


def test_reject_refuses_the_whole_file_for_one_bad_item(tmp_path):
    error = refused(write(tmp_path, [item("a"), item("b"), item("c", image_key="/abs")]))
    assert error.error_count == 1 and error.errors[0].index == 2 and error.errors[0].field == "image_key"
    assert "1 invalid item (indexes are 0-based)" in str(error)


def test_dead_letter_returns_good_tasks_and_bad_items(tmp_path, processor):
    long_id = "i" * (taskfile.MAX_IDENTITY_CHARS + 1)
    items = [item("a"), 7, item("b", variant="sepia"), {"id": 5, "image_key": "k", "variant": "gzip"},
             item("c"), item(long_id)]
    result = load(write(tmp_path, items), check=processor.check, on_invalid="dead-letter")
    assert [t.id for t in result.tasks] == ["a", "c"]
    assert [(i.index, i.raw) for i in result.invalid] == [(1, None), (2, items[2]), (3, None),
                                                          (5, None)]
    assert [i.error.field for i in result.invalid] == [None, "variant", "id", "id"]


def test_a_valid_item_sharing_its_id_with_a_refused_one_is_checked_on_its_own(tmp_path, processor):
    """Found by a review: an item refused for a repeated JSON key registered its id, and a valid copy
    after it (the same once decoded) was dropped as an identical duplicate: neither run nor reported."""
    text = ('[{"id": "a", "image_key": "k/a.txt", "variant": "gzip", "variant": "gzip"},'
            ' {"id": "a", "image_key": "k/a.txt", "variant": "gzip"}]')
    result = load(write(tmp_path, text), check=processor.check, on_invalid="dead-letter")
    assert [t.id for t in result.tasks] == ["a"] and result.duplicates_dropped == 0
    assert [i.index for i in result.invalid] == [0]


def test_items_without_identity_from_two_files_get_two_dead_letter_keys(tmp_path):
    """Found by a review: every item without an id/image_key/variant was keyed by its index alone
    (``invalid-item:#0``), so a different bad item of another file was reported as recorded before,
    and never recorded. The key now holds a digest of the item: the same file again adds nothing."""
    keys = []
    for name, content in (("a.json", [5]), ("b.json", ["x"]), ("a2.json", [5])):
        [invalid] = load(write(tmp_path, content, name), on_invalid="dead-letter").invalid
        task_id, key, payload, _error = invalid.dead_letter()
        keys.append(key)
        assert json.loads(payload) == content[0]  # what was refused, kept
    assert keys[0] != keys[1] and keys[0] == keys[2]
    assert all(key.startswith("invalid-item:#0:") for key in keys)


# -- arguments and error types ---------------------------------------------------------

@pytest.mark.parametrize("on_invalid", ["drop", "REJECT", "dead_letter", None])
def test_on_invalid_is_validated_before_any_io(tmp_path, on_invalid):
    with pytest.raises(ValueError, match=f"on_invalid must be 'reject' or 'dead-letter', got {on_invalid!r}"):
        load(tmp_path / "absent.json", on_invalid=on_invalid)


@pytest.mark.parametrize("max_bytes", [0, -1, True, 1.5, "1024"])
def test_max_bytes_is_validated(tmp_path, max_bytes):
    with pytest.raises(ValueError, match="max_bytes must be a positive integer"):
        load(write(tmp_path, "[]"), max_bytes=max_bytes)


def test_check_must_be_callable(tmp_path):
    with pytest.raises(TypeError, match="check must be callable"):
        load(write(tmp_path, "[]"), check="processor")


def test_task_file_error_is_an_invalid_task_and_survives_pickling(tmp_path):
    error = refused(write(tmp_path, [item(variant="Bad")]))
    assert isinstance(error, InvalidTask) and isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.path, copy.errors, copy.error_count) == (
        str(error), error.path, error.errors, error.error_count)
    assert isinstance(copy.errors[0], ItemError) and str(copy.errors[0]) == copy.errors[0].message
