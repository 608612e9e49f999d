"""The task model: validation of untrusted input, the idempotency key, immutability, statuses."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from taskqueue.errors import InvalidTask, PermanentError
from taskqueue.task import (MAX_ID_LENGTH, MAX_PARAM_STRING, MAX_PARAMS, Task, TaskResult, TaskStatus,
                            make_idempotency_key)

GOOD = {"id": "t-1", "image_key": "images/cat.jpg", "variant": "thumb_128"}


def with_(**changes):
    obj = dict(GOOD)
    obj.update(changes)
    return obj


def without(name):
    return {k: v for k, v in GOOD.items() if k != name}


# -- from_dict: accepted ---------------------------------------------------------------

@pytest.mark.parametrize("obj", [
    GOOD,
    with_(params={}),
    with_(params=None),
    with_(params={"quality": 90}),
    with_(params={"a": 1, "b": 1.5, "c": "x" * MAX_PARAM_STRING, "d": True, "e": None}),
    with_(params={f"p{i}": i for i in range(MAX_PARAMS)}),
    with_(id="x" * MAX_ID_LENGTH),
    with_(id="A.b_c:d@e/f+g=h-1"),
    with_(image_key="a/b:c/d e.png"),
    with_(variant="g" + "x" * 31),
    with_(variant="gzip"),
], ids=lambda o: json.dumps(o)[:50])
def test_from_dict_accepts_valid_tasks(obj):
    task = Task.from_dict(obj)
    assert (task.id, task.image_key, task.variant) == (obj["id"], obj["image_key"], obj["variant"])
    assert task.params == (obj.get("params") or {})


# -- from_dict: refused, the message names the field ---------------------------------------

INVALID = [
    # (case id, input, text the message must contain)
    ("list", [GOOD], "JSON object"),
    ("string", "t-1", "JSON object"),
    ("none", None, "JSON object"),
    ("missing id", without("id"), "'id'"),
    ("missing image_key", without("image_key"), "'image_key'"),
    ("missing variant", without("variant"), "'variant'"),
    ("unknown field", with_(priority=1), "'priority'"),
    ("id int", with_(id=1), "'id'"),
    ("image_key int", with_(image_key=7), "'image_key'"),
    ("variant list", with_(variant=["gzip"]), "'variant'"),
    ("id null", with_(id=None), "'id'"),
    ("id empty", with_(id=""), "'id'"),
    ("id space", with_(id="t 1"), "'id'"),
    ("id newline", with_(id="t\n1"), "'id'"),
    ("id non-ascii", with_(id="tâche"), "'id'"),
    ("id too long", with_(id="x" * (MAX_ID_LENGTH + 1)), "'id'"),
    ("image_key dotdot", with_(image_key="../x"), "'image_key'"),
    ("image_key absolute", with_(image_key="/etc/passwd"), "'image_key'"),
    ("image_key empty", with_(image_key=""), "'image_key'"),
    ("image_key backslash", with_(image_key="a\\b"), "'image_key'"),
    ("image_key NUL", with_(image_key="a\x00b"), "'image_key'"),
    ("variant upper", with_(variant="Thumb_128"), "'variant'"),
    ("variant colon", with_(variant="gzip:x"), "'variant'"),
    ("variant digit first", with_(variant="1gzip"), "'variant'"),
    ("variant empty", with_(variant=""), "'variant'"),
    ("variant too long", with_(variant="g" * 33), "'variant'"),
    ("params list", with_(params=[1, 2]), "'params'"),
    ("params string", with_(params="level=9"), "'params'"),
    ("too many params", with_(params={f"p{i}": i for i in range(MAX_PARAMS + 1)}), "'params'"),
    ("param name upper", with_(params={"Level": 1}), "'params'"),
    ("param name empty", with_(params={"": 1}), "'params'"),
    ("param nan", with_(params={"level": float("nan")}), "'params.level'"),
    ("param inf", with_(params={"level": float("inf")}), "'params.level'"),
    ("param -inf", with_(params={"level": float("-inf")}), "'params.level'"),
    ("param nested object", with_(params={"level": {"x": 1}}), "'params.level'"),
    ("param list", with_(params={"level": [1]}), "'params.level'"),
    ("param long string", with_(params={"note": "x" * (MAX_PARAM_STRING + 1)}), "'params.note'"),
]


@pytest.mark.parametrize("obj, needle", [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_from_dict_refuses_invalid_input_naming_the_field(obj, needle):
    with pytest.raises(InvalidTask) as info:
        Task.from_dict(obj)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message  # safe to log on one line, even for a value holding a newline
    assert isinstance(info.value, PermanentError)


def test_bad_value_is_shown_truncated_in_the_message():
    with pytest.raises(InvalidTask) as info:
        Task.from_dict(with_(id="bad id " + "x" * 1000))
    assert "bad id" in str(info.value)
    assert len(str(info.value)) < 300


def test_image_key_error_keeps_the_key_error_as_cause():
    with pytest.raises(InvalidTask) as info:
        Task.from_dict(with_(image_key="../x"))
    assert "'../x'" in str(info.value)
    assert info.value.__cause__ is not None


def test_constructor_validates_too():
    with pytest.raises(InvalidTask, match="'variant'"):
        Task(id="t", image_key="k", variant="BAD")
    with pytest.raises(InvalidTask, match="'image_key'"):
        Task(id="t", image_key=None, variant="gzip")
    with pytest.raises(InvalidTask, match="'params'"):
        Task(id="t", image_key="k", variant="gzip", params=[("level", 1)])


# -- the idempotency key ---------------------------------------------------------------

def test_idempotency_key_is_image_key_colon_variant():
    task = Task.from_dict(GOOD)
    assert task.idempotency_key == "images/cat.jpg:thumb_128" == make_idempotency_key(
        "images/cat.jpg", "thumb_128")


def test_idempotency_key_ignores_id_and_params():
    a = Task(id="a", image_key="k", variant="gzip", params={"level": 1})
    b = Task(id="b", image_key="k", variant="gzip", params={"level": 9})
    assert a.idempotency_key == b.idempotency_key


IMAGE_KEYS = ["a", "ab:c", "ab:c:gzip", "ab:gzip", "x/y:z", "x/y:z:thumb_1", "gzip", "qq::r", "zz:", "zz:gray"]
VARIANTS = ["gzip", "gray", "thumb_1", "thumb_12", "c", "c_gzip", "z"]


def test_idempotency_key_is_unambiguous_even_with_colons_in_image_keys():
    pairs = [(k, v) for k, v in itertools.product(IMAGE_KEYS, VARIANTS)]
    keys = {}
    for image_key, variant in pairs:
        task = Task(id="t", image_key=image_key, variant=variant)
        key = task.idempotency_key
        assert key not in keys, f"{(image_key, variant)} and {keys[key]} share {key!r}"
        keys[key] = (image_key, variant)
        # It splits back at the last colon, whatever the image key holds.
        assert tuple(key.rsplit(":", 1)) == (image_key, variant)
    assert len(keys) == len(pairs)


# -- immutability and round trip ---------------------------------------------------------

def test_task_is_frozen():
    task = Task.from_dict(GOOD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.variant = "gzip"
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.params = {}


def test_params_are_copied_from_the_input():
    params = {"quality": 80}
    obj = with_(params=params)
    task = Task.from_dict(obj)
    params["quality"] = 1
    params["extra"] = object()
    obj["params"] = {"quality": 2}
    assert task.params == {"quality": 80}


def test_empty_params_are_not_the_callers_dict():
    params: dict = {}  # a task without params keeps none of the caller's: filling the dict later changes nothing
    task = Task(id="t", image_key="k", variant="gzip", params=params)
    params["format"] = "webp"
    assert task.params == {} and task.idempotency_key == "k:gzip"
    with pytest.raises(TypeError):
        task.params["format"] = "webp"  # type: ignore[index]


def test_params_cannot_be_mutated_through_the_task():
    task = Task.from_dict(with_(params={"quality": 80}))
    with pytest.raises(TypeError):
        task.params["quality"] = 1


def test_tasks_are_hashable_and_compare_by_identity_fields():
    a = Task(id="t", image_key="k", variant="gzip", params={"level": 1})
    b = Task(id="t", image_key="k", variant="gzip", params={"level": 9})
    c = Task(id="u", image_key="k", variant="gzip")
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2


@pytest.mark.parametrize("obj", [GOOD, with_(params={"quality": 70, "note": "x", "flag": False, "z": None})])
def test_to_dict_round_trips_through_json(obj):
    task = Task.from_dict(obj)
    data = json.loads(json.dumps(task.to_dict()))
    again = Task.from_dict(data)
    assert again == task
    assert again.params == task.params
    assert data == {k: v for k, v in obj.items() if k != "params" or v}


def test_to_dict_omits_empty_params_and_returns_a_copy():
    task = Task.from_dict(with_(params={"quality": 70}))
    out = task.to_dict()
    out["params"]["quality"] = 1
    assert task.params == {"quality": 70}
    assert "params" not in Task.from_dict(GOOD).to_dict()


# -- statuses and results ------------------------------------------------------------------

def test_status_values_are_the_persisted_strings():
    assert {s.value for s in TaskStatus} == {"queued", "running", "success", "failed", "dead"}
    assert TaskStatus("success") is TaskStatus.SUCCESS
    assert TaskStatus.SUCCESS == "success"  # str enum: compares equal to its stored value


@pytest.mark.parametrize("status, terminal", [
    (TaskStatus.QUEUED, False), (TaskStatus.RUNNING, False), (TaskStatus.FAILED, False),
    (TaskStatus.SUCCESS, True), (TaskStatus.DEAD, True),
])
def test_only_success_and_dead_are_terminal(status, terminal):
    assert status.terminal is terminal


def test_task_result_defaults_and_is_frozen():
    result = TaskResult(task_id="t", idempotency_key="k:gzip", status=TaskStatus.SUCCESS,
                        output_key="variants/gzip/k.gz", attempts=1)
    assert result.deduplicated is False
    assert (result.queue_wait_s, result.processing_s, result.output_bytes) == (None, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.attempts = 2


@pytest.mark.parametrize("task", [
    Task(id="t1", image_key="k/1.jpg", variant="gzip"),
    Task(id="a:b@c/d+e=f-g.h", image_key="photos/été/\u00e9\u4e2d\U0001f600.png", variant="thumb_256"),
    Task(id="q", image_key='say "hi"/back\\slash'.replace("\\", "_"), variant="gray"),
    Task(id="p", image_key="k", variant="thumb_64", params={"format": "png", "quality": 80, "z": None}),
], ids=["plain", "unicode", "quotes", "params"])
def test_the_stored_payload_is_the_canonical_json_of_the_task(task):
    from taskqueue.store.contract import task_payload
    assert task_payload(task) == json.dumps(task.to_dict(), sort_keys=True)
    assert Task.from_dict(json.loads(task_payload(task))) == task
