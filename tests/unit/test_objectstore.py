"""LocalObjectStore: key validation, confinement to the root, chunked reads, atomic writes, temp sweeping."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import threading

import pytest

from taskqueue import confined, keys, objectstore
from taskqueue.errors import InvalidKey, OutputWriteError, PermanentError, SourceMissing
from taskqueue.objectstore import (DEFAULT_CHUNK_SIZE, MAX_KEY_LENGTH, MAX_SEGMENT_BYTES, MAX_SEGMENT_LENGTH,
                                   TEMP_MARKER, LocalObjectStore, validate_key)

WAIT_S = 30  # hang guard only
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX-only behaviour")


def symlink(target, link, target_is_directory=False):
    """os.symlink, or skip the test where the platform or user cannot make symlinks."""
    try:
        os.symlink(target, link, target_is_directory=target_is_directory)
    except (OSError, NotImplementedError) as exc:  # Windows without the privilege
        pytest.skip(f"cannot create symlinks here: {exc}")


def listing(root):
    """Every file under root, relative, sorted."""
    out = []
    for dirpath, _dirs, files in os.walk(root):
        out.extend(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/") for f in files)
    return sorted(out)


# -- key validation ------------------------------------------------------------------------

BAD_KEYS = [
    ("absolute", "/etc/passwd"),
    ("absolute root", "/"),
    ("dotdot", "../x"),
    ("dotdot middle", "a/../b"),
    ("dotdot last", "a/.."),
    ("dotdot alone", ".."),
    ("dot", "./a"),
    ("dot middle", "a/./b"),
    ("dot alone", "."),
    ("backslash", "a\\b"),
    ("backslash dotdot", "..\\x"),
    ("NUL", "a\x00b"),
    ("newline", "a\nb"),
    ("tab", "a\tb"),
    ("unit separator", "a\x1fb"),
    ("DEL", "a\x7fb"),
    ("empty segment", "a//b"),
    ("trailing slash", "a/"),
    ("segment too long", "d/" + "s" * (MAX_SEGMENT_LENGTH + 1)),
    ("segment too long in bytes", "d/" + "é" * (MAX_SEGMENT_BYTES // 2 + 1)),  # 2 bytes a character
    ("segment too long in 4-byte characters", "\U0001f600" * (MAX_SEGMENT_BYTES // 4 + 1) + "/d"),
    ("temp marker", "a/.b" + TEMP_MARKER + "123-4"),
    ("temp marker bare", "x" + TEMP_MARKER),
    ("drive letter", "C:/x"),
    ("drive relative", "c:x"),
    ("drive bare", "C:"),
]


@pytest.mark.parametrize("key", [k for _, k in BAD_KEYS], ids=[name for name, _ in BAD_KEYS])
def test_validate_key_refuses_naming_the_key(key):
    with pytest.raises(InvalidKey) as info:
        validate_key(key)
    message = str(info.value)
    assert repr(key) in message
    assert "\n" not in message and "\x00" not in message  # control characters are escaped
    assert isinstance(info.value, PermanentError) and isinstance(info.value, ValueError)


def test_validate_key_refuses_empty_and_too_long_keys():
    with pytest.raises(InvalidKey, match="empty"):
        validate_key("")
    too_long = "/".join(["k" * 100] * 5) + "/" + "z" * 8  # 512 + 1 characters, every segment short
    assert len(too_long) == MAX_KEY_LENGTH + 1
    with pytest.raises(InvalidKey, match=str(MAX_KEY_LENGTH + 1)):
        validate_key(too_long)


def _outcome(check, key):
    try:
        return check(key)
    except InvalidKey as exc:
        return f"refused: {exc}"


@pytest.mark.parametrize("seed", range(4))
def test_the_one_match_for_plain_keys_decides_as_every_rule_does(seed):
    """validate_key accepts the common keys with one regular expression before the rule-by-rule checks:
    on random keys built from the characters that matter, both must decide alike (and say the same)."""
    import random
    rng = random.Random(seed)
    pieces = ["a", "Z", "0", "_", "-", ".", "..", "/", "//", ":", "\\", "=", "+", "@", " ", "\x00", "\x7f", "é",
              "\ud800", TEMP_MARKER, "x" * (MAX_SEGMENT_LENGTH - 1), "y" * MAX_SEGMENT_LENGTH]
    for _ in range(4000):
        key = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        assert _outcome(validate_key, key) == _outcome(keys._check_key, key), key
    for key in ["a" * MAX_KEY_LENGTH, "a" * (MAX_KEY_LENGTH + 1), "photos/2024/img_001.jpg", "a/" + "b" * 201, "C:x"]:
        assert _outcome(validate_key, key) == _outcome(keys._check_key, key), key


@pytest.mark.parametrize("key", [None, 1, b"abc", ["a"]], ids=repr)
def test_validate_key_refuses_non_strings(key):
    with pytest.raises(InvalidKey, match=type(key).__name__):
        validate_key(key)


@pytest.mark.parametrize("key", [
    "a", "a/b/c.jpg", "ab:c", "dir/a:b", "ümlaut/ß.png", "...", "a..b", ".hidden", "x.tmp",
    "s" * MAX_SEGMENT_LENGTH, "/".join(["k" * 100] * 5) + "/" + "z" * 7,  # exactly MAX_KEY_LENGTH
], ids=lambda k: k[:20])
def test_validate_key_accepts_ordinary_keys(key):
    assert validate_key(key) == key


@pytest.mark.parametrize("key", ["a\x85b", "a\x9b31mb"], ids=["NEL", "CSI"])
def test_validate_key_refuses_c1_control_characters(key):
    with pytest.raises(InvalidKey):
        validate_key(key)


@pytest.mark.parametrize("key", ["a\ud800", "img/\udcff.png"], ids=["high", "low"])
def test_keys_that_cannot_be_encoded_as_file_names_are_invalid(key, store):
    with pytest.raises(InvalidKey):
        store.exists(key)


@pytest.mark.parametrize("call", [
    lambda s, k: s.read_chunks(k), lambda s, k: s.open_read(k), lambda s, k: s.write(k, [b"x"]),
    lambda s, k: s.exists(k), lambda s, k: s.size(k), lambda s, k: s.delete(k), lambda s, k: s.path_for(k),
], ids=["read_chunks", "open_read", "write", "exists", "size", "delete", "path_for"])
@pytest.mark.parametrize("key", ["../canary/secret.txt", "../escape", "/tmp/escape"])
def test_every_operation_validates_before_io(store, call, key):
    with pytest.raises(InvalidKey):
        call(store, key)
    assert listing(store.root) == []


# -- constructor -----------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [0, -1, 1.5, "64"])
def test_chunk_size_must_be_a_positive_integer(tmp_path, chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        LocalObjectStore(tmp_path / "s", chunk_size=chunk_size)


def test_root_is_created_unless_told_not_to(tmp_path):
    LocalObjectStore(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    with pytest.raises(OSError):
        LocalObjectStore(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()


def test_root_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OSError):
        LocalObjectStore(tmp_path / "file")
    with pytest.raises(NotADirectoryError):
        LocalObjectStore(tmp_path / "file", create=False)


# -- confinement: symlinks ----------------------------------------------------------------

def test_symlink_to_a_file_outside_the_root_is_refused(store, canary):
    symlink(canary / "secret.txt", os.path.join(store.root, "leak"))
    for call in (lambda: store.read_chunks("leak"), lambda: store.open_read("leak"),
                 lambda: store.write("leak", [b"overwritten"]), lambda: store.exists("leak"),
                 lambda: store.delete("leak")):
        with pytest.raises(InvalidKey, match="outside"):
            call()
    assert (canary / "secret.txt").read_bytes() == b"do not touch\n"


def test_dangling_symlink_pointing_outside_cannot_create_a_file_there(store, canary):
    symlink(canary / "new.txt", os.path.join(store.root, "dangling"))
    with pytest.raises(InvalidKey):
        store.write("dangling", [b"x"])
    assert not (canary / "new.txt").exists()


def test_symlinked_directory_pointing_outside_is_refused(store, canary):
    symlink(canary, os.path.join(store.root, "evil"), target_is_directory=True)
    with pytest.raises(InvalidKey):
        store.write("evil/planted.txt", [b"x"])
    with pytest.raises(InvalidKey):
        store.read_chunks("evil/secret.txt")


def test_symlink_to_a_sibling_sharing_the_root_name_prefix_is_refused(tmp_path):
    # "<root>-evil" starts with "<root>"; a prefix check without a separator would let it through.
    store = LocalObjectStore(tmp_path / "store")
    sibling = tmp_path / "store-evil"
    sibling.mkdir()
    (sibling / "x").write_bytes(b"outside")
    symlink(sibling, tmp_path / "store" / "link", target_is_directory=True)
    with pytest.raises(InvalidKey):
        store.read_chunks("link/x")


def test_symlink_staying_inside_the_root_works(store):
    store.write("data/obj", [b"payload"])
    symlink(os.path.join(store.root, "data", "obj"), os.path.join(store.root, "alias"))
    symlink(os.path.join(store.root, "data"), os.path.join(store.root, "dir_alias"), target_is_directory=True)
    assert b"".join(store.read_chunks("alias")) == b"payload"
    assert b"".join(store.read_chunks("dir_alias/obj")) == b"payload"
    assert store.exists("alias") and store.size("alias") == 7


@pytest.mark.skipif(not confined.BENEATH, reason="no *at calls that refuse symlinks here")
@pytest.mark.parametrize("operation", ["read", "open_read", "write", "exists", "size", "delete"])
def test_a_directory_swapped_for_a_symlink_after_its_path_was_resolved_is_never_followed_out(
        store, canary, monkeypatch, operation):
    """Found by a review (a real race, renameat2 against the store, leaked reads and writes within
    seconds): the path was resolved and checked, then opened by name, so a directory renamed away
    and replaced by a symlink in between was followed out of the root. The swap is injected at
    that point here: the path is resolved, then ``d`` becomes a symlink to the canary directory.
    The key goes through a symlink inside the root (``alias`` -> ``d``), so it is resolved before it
    is walked (a key without one is walked as written: see the test after this one)."""
    store.write("d/secret.txt", [b"inside"])
    symlink(os.path.join(store.root, "d"), os.path.join(store.root, "alias"), target_is_directory=True)
    resolve = store.path_for

    def resolve_then_swap(key: str) -> str:
        path = resolve(key)
        monkeypatch.setattr(store, "path_for", resolve)  # once
        os.rename(os.path.join(store.root, "d"), os.path.join(store.root, "d-moved"))
        symlink(canary, os.path.join(store.root, "d"), target_is_directory=True)
        return path

    monkeypatch.setattr(store, "path_for", resolve_then_swap)
    if operation in ("read", "open_read", "size"):
        call = {"read": lambda: b"".join(store.read_chunks("alias/secret.txt")),
                "open_read": lambda: store.open_read("alias/secret.txt").read(),
                "size": lambda: store.size("alias/secret.txt")}[operation]
        with pytest.raises(SourceMissing):
            call()
    elif operation == "write":
        with pytest.raises(OutputWriteError):
            store.write("alias/planted.txt", [b"x"])
    elif operation == "exists":
        assert store.exists("alias/secret.txt") is False
    else:
        assert store.delete("alias/secret.txt") is False
    # the canary fixture fails the test at teardown if anything beside the store root changed
    assert (canary / "secret.txt").read_bytes() == b"do not touch\n" and not (canary / "planted.txt").exists()


@pytest.mark.skipif(not confined.BENEATH, reason="no *at calls that refuse symlinks here")
def test_a_key_without_a_symlink_is_walked_as_written_and_one_with_a_symlink_is_resolved_first(store, monkeypatch):
    """Resolving a path (``realpath``) looks at every component of it, each a system call that gives
    the GIL up: a key that passes no symlink is walked from the root as written instead, the walk
    itself refusing any symlink (see ``_reach``). One that passes a symlink inside the root is
    resolved first, as before."""
    store.write("a/b/obj.txt", [b"x"])
    symlink(os.path.join(store.root, "a"), os.path.join(store.root, "alias"), target_is_directory=True)
    resolve, resolved = store.path_for, []
    monkeypatch.setattr(store, "path_for", lambda key: resolved.append(key) or resolve(key))
    assert b"".join(store.read_chunks("a/b/obj.txt")) == b"x"
    store.write("a/c/new.txt", [b"y"])
    assert store.exists("a/c/new.txt") and store.size("a/b/obj.txt") == 1 and store.delete("a/c/new.txt")
    assert not store.exists("a/c/missing.txt")
    assert resolved == []
    assert b"".join(store.read_chunks("alias/b/obj.txt")) == b"x"
    assert resolved == ["alias/b/obj.txt"]


@pytest.mark.skipif(not confined.BENEATH, reason="no *at calls that refuse symlinks here")
@pytest.mark.parametrize("operation", ["read", "open_read", "write", "exists", "size", "delete"])
def test_a_directory_swapped_for_a_symlink_once_walked_is_never_followed_out(
        store, canary, monkeypatch, operation):
    """A key with no symlink is walked as written, not resolved first (see ``_reach``). Once the walk
    holds ``d``, ``d`` is renamed away and replaced by a symlink to the canary directory: the
    operation goes on in the directory the walk holds (the one renamed), never in the canary."""
    store.write("d/secret.txt", [b"inside"])
    walk = store._directory
    swapped = []

    def walk_then_swap(directory: str, **how):
        fd = walk(directory, **how)
        if directory == os.path.join(store.root, "d") and not swapped:
            os.rename(directory, os.path.join(store.root, "d-moved"))
            symlink(canary, directory, target_is_directory=True)
            swapped.append(directory)
        return fd

    monkeypatch.setattr(store, "_directory", walk_then_swap)
    moved = os.path.join(store.root, "d-moved")
    if operation == "read":
        assert b"".join(store.read_chunks("d/secret.txt")) == b"inside"
    elif operation == "open_read":
        assert store.open_read("d/secret.txt").read() == b"inside"
    elif operation == "size":
        assert store.size("d/secret.txt") == 6
    elif operation == "write":
        store.write("d/planted.txt", [b"x"])
        assert open(os.path.join(moved, "planted.txt"), "rb").read() == b"x"
    elif operation == "exists":
        assert store.exists("d/secret.txt") is True
    else:
        assert store.delete("d/secret.txt") is True and not os.path.exists(os.path.join(moved, "secret.txt"))
    assert swapped  # the swap happened, after the walk
    assert (canary / "secret.txt").read_bytes() == b"do not touch\n" and not (canary / "planted.txt").exists()


@pytest.mark.skipif(not confined.BENEATH, reason="no *at calls that refuse symlinks here")
@pytest.mark.parametrize("route", ["resolved", "walked"])
@pytest.mark.parametrize("operation", ["read", "open_read", "exists", "size"])
def test_an_object_swapped_for_a_symlink_after_its_path_was_resolved_is_never_followed_out(
        store, canary, monkeypatch, operation, route):
    """Found by a review: the object itself swapped for a symlink to a file outside (the same window
    as a directory's) raised a raw ``OSError`` (ELOOP) from a read, and ``size`` answered with the
    symlink's length. Injected once the key was resolved (reached through a symlink inside the root,
    ``alias`` -> ``d``), or once the walk of a key without one has found a regular file there."""
    store.write("d/obj.txt", [b"inside"])
    target = os.path.join(store.root, "d", "obj.txt")

    def swap() -> None:
        os.replace(target, target + ".moved")
        symlink(canary / "secret.txt", target)

    if route == "resolved":
        symlink(os.path.join(store.root, "d"), os.path.join(store.root, "alias"), target_is_directory=True)
        key, resolve = "alias/obj.txt", store.path_for

        def resolve_then_swap(key: str) -> str:
            path = resolve(key)
            monkeypatch.setattr(store, "path_for", resolve)  # once
            swap()
            return path
        monkeypatch.setattr(store, "path_for", resolve_then_swap)
    else:
        key, reach = "d/obj.txt", store._reach

        def reach_then_swap(key: str, *, create: bool = False):
            found = reach(key, create=create)
            monkeypatch.setattr(store, "_reach", reach)  # once
            swap()
            return found
        monkeypatch.setattr(store, "_reach", reach_then_swap)
    if operation == "exists":
        assert store.exists(key) is False
    else:
        call = {"read": lambda: b"".join(store.read_chunks(key)),
                "open_read": lambda: store.open_read(key).read(),
                "size": lambda: store.size(key)}[operation]
        with pytest.raises(SourceMissing, match=f"'{key}' does not exist"):
            call()
    assert (canary / "secret.txt").read_bytes() == b"do not touch\n"


@pytest.mark.skipif(not confined.BENEATH, reason="no *at calls that refuse symlinks here")
@pytest.mark.parametrize("refusal", [errno.ELOOP, errno.EMLINK], ids=["macOS", "FreeBSD"])
@pytest.mark.parametrize("operation", ["read", "size", "exists", "delete"])
def test_a_symlinked_directory_refused_as_other_systems_refuse_it_is_missing_too(
        store, canary, monkeypatch, refusal, operation):
    """Found by a review: opening a symlink with ``O_DIRECTORY | O_NOFOLLOW`` fails ``ENOTDIR`` on
    Linux, but ``ELOOP`` on macOS and ``EMLINK`` on FreeBSD, which escaped as raw ``OSError``s. Those
    systems' answer is simulated here on a directory swapped for a symlink."""
    store.write("d/secret.txt", [b"inside"])
    os.rename(os.path.join(store.root, "d"), os.path.join(store.root, "d-moved"))
    symlink(canary, os.path.join(store.root, "d"), target_is_directory=True)
    real_open = os.open

    def open_as_elsewhere(path, flags, mode=0o777, *, dir_fd=None):
        if dir_fd is not None and flags & os.O_DIRECTORY and flags & os.O_NOFOLLOW and os.path.islink(
                os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)):
            raise OSError(refusal, os.strerror(refusal), path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to see where a descriptor points")
    monkeypatch.setattr(store, "path_for", lambda key: os.path.join(store.root, *key.split("/")))  # resolved before
    monkeypatch.setattr(objectstore.os, "open", open_as_elsewhere)
    if operation == "read":
        with pytest.raises(SourceMissing):
            b"".join(store.read_chunks("d/secret.txt"))
    elif operation == "size":
        with pytest.raises(SourceMissing):
            store.size("d/secret.txt")
    elif operation == "exists":
        assert store.exists("d/secret.txt") is False
    else:
        assert store.delete("d/secret.txt") is False
    assert (canary / "secret.txt").read_bytes() == b"do not touch\n"


@pytest.mark.skipif(not (confined.BENEATH and hasattr(os, "geteuid") and os.geteuid() == 0),
                    reason="needs *at calls, and root to act as another user")
def test_directories_that_may_be_searched_but_not_listed_still_work(tmp_path):
    """Found by a review: the walk opened each directory for reading, so a store whose directories a
    user may pass through and write to but not list (mode 0o733) refused that user every object. Run
    in a child process as ``nobody``."""
    base = tempfile.mkdtemp()  # tmp_path's parents are closed to other users
    try:
        os.chmod(base, 0o755)
        root = os.path.join(base, "store")
        LocalObjectStore(root).write("in/src.txt", [b"hello"])
        for directory in (root, os.path.join(root, "in")):
            os.chmod(directory, 0o733)
        os.chmod(os.path.join(root, "in", "src.txt"), 0o644)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: only os calls and the store, then _exit
            try:
                os.close(read_end)
                os.setgid(65534)
                os.setuid(65534)
                s = LocalObjectStore(root)
                seen = [s.exists("in/src.txt"), s.size("in/src.txt"), b"".join(s.read_chunks("in/src.txt")).decode(),
                        s.write("in/out.txt", [b"made"]), s.write("new/dir/out.txt", [b"deep"])]
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                seen = [f"{type(exc).__name__}: {exc}"]
            os.write(write_end, json.dumps(seen).encode())
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as f:
            seen = json.loads(f.read())
        assert os.waitpid(pid, 0)[1] == 0
        assert seen == [True, 5, "hello", 4, 4]
        with open(os.path.join(root, "new", "dir", "out.txt"), "rb") as f:
            assert f.read() == b"deep"
    finally:
        for directory, _dirs, _files in os.walk(base):
            os.chmod(directory, 0o755)
        shutil.rmtree(base)


@pytest.mark.skipif(not (confined.BENEATH and os.path.isdir("/proc/self/fd")), reason="needs *at calls and /proc")
def test_a_directory_another_writer_made_first_is_made_durable_too(store, monkeypatch):
    """Found by a review: the writer whose mkdir lost the race (FileExistsError) skipped fsyncing the
    parent, and published its object before the winner's fsync of that entry had happened."""
    synced: list[str] = []
    real_fsync, real_mkdir = os.fsync, os.mkdir

    def spy(fd: int) -> None:
        real_fsync(fd)  # what it made durable, once it has (an O_PATH descriptor cannot be: EBADF)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    def beaten_to_it(name, mode=0o777, *, dir_fd=None):
        real_mkdir(name, mode, dir_fd=dir_fd)  # the other writer's mkdir lands first (its fsync still to come)
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name)

    monkeypatch.setattr(objectstore.os, "fsync", spy)
    monkeypatch.setattr(objectstore.os, "mkdir", beaten_to_it)
    store.write("new/obj", [b"x"])
    assert [path for path in synced if os.path.isdir(path)] == [store.root, f"{store.root}/new"]


@pytest.mark.skipif(not (confined.BENEATH and os.path.isdir("/proc/self/fd")), reason="needs *at calls and /proc")
def test_every_directory_a_write_creates_is_made_durable_in_its_parent(store, monkeypatch):
    """Found by a review: only the leaf directory was fsynced, so after a power cut the database could
    say success while the new directories on the object's path were gone."""
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        real_fsync(fd)  # what it made durable, once it has (an O_PATH descriptor cannot be: EBADF)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(objectstore.os, "fsync", spy)
    store.write("a/b/c/obj", [b"x"])
    root = store.root
    directories = [path for path in synced if os.path.isdir(path)]
    assert directories == [root, f"{root}/a", f"{root}/a/b", f"{root}/a/b/c"]  # each new entry, then the rename
    synced.clear()
    store.write("a/b/c/other", [b"y"])
    assert [path for path in synced if os.path.isdir(path)] == [f"{root}/a/b/c"]  # nothing new but the file


def test_a_root_deleted_and_made_again_is_the_root(store):
    """Found by a review of a store that walked from a descriptor of its root held for its life:
    after ``rm -rf root && mkdir root`` every access failed (a read as SourceMissing, which
    dead-letters). The root is reached by its path at every access."""
    store.write("d/obj.txt", [b"old"])
    shutil.rmtree(store.root)
    os.mkdir(store.root)
    with open(os.path.join(store.root, "src.txt"), "wb") as f:
        f.write(b"new source")
    assert b"".join(store.read_chunks("src.txt")) == b"new source"
    assert store.write("d/out.txt", [b"x"]) == 1 and store.write("top.txt", [b"y"]) == 1
    assert sorted(os.listdir(store.root)) == ["d", "src.txt", "top.txt"]
    assert b"".join(store.read_chunks("d/out.txt")) == b"x" and not store.exists("d/obj.txt")


def test_top_level_and_nested_keys_reach_the_same_root_once_it_is_renamed_and_replaced(store, tmp_path):
    """Found by the same review: there, a key without a directory opened the root by its path while
    the others walked from the directory held, so the two went to different directories."""
    store.write("d/obj.txt", [b"x"])
    moved = tmp_path / "moved-root"
    os.rename(store.root, moved)
    os.mkdir(store.root)
    try:
        store.write("top.txt", [b"t"])
        store.write("d/nested.txt", [b"n"])
        assert sorted(os.listdir(store.root)) == ["d", "top.txt"]
        assert os.listdir(os.path.join(store.root, "d")) == ["nested.txt"]
        assert sorted(p.name for p in (moved / "d").iterdir()) == ["obj.txt"]
    finally:
        shutil.rmtree(store.root)
        os.rename(moved, store.root)


def test_root_reached_through_a_symlink_works(tmp_path):
    (tmp_path / "real").mkdir()
    symlink(tmp_path / "real", tmp_path / "via", target_is_directory=True)
    store = LocalObjectStore(tmp_path / "via")
    store.write("a/b", [b"x"])
    assert (tmp_path / "real" / "a" / "b").read_bytes() == b"x"
    assert b"".join(store.read_chunks("a/b")) == b"x"


# -- reads ------------------------------------------------------------------------------------

def test_one_mib_read_with_64_kib_chunks_yields_16_full_chunks(store):
    data = bytes(range(256)) * 4096  # 1 MiB
    store.write("big", [data])
    chunks = list(store.read_chunks("big"))
    assert store.chunk_size == DEFAULT_CHUNK_SIZE == 64 * 1024
    assert [len(c) for c in chunks] == [64 * 1024] * 16
    assert b"".join(chunks) == data


@pytest.mark.parametrize("size, chunk, expected", [
    (100_000, 30_000, [30_000, 30_000, 30_000, 10_000]),
    (90_000, 30_000, [30_000, 30_000, 30_000]),
    (1, 30_000, [1]),
    (0, 30_000, []),
])
def test_chunks_are_chunk_size_except_the_last(store_root, size, chunk, expected):
    store = LocalObjectStore(store_root, chunk_size=chunk)
    data = os.urandom(size)
    store.write("obj", [data])
    chunks = list(store.read_chunks("obj"))
    assert [len(c) for c in chunks] == expected
    assert b"".join(chunks) == data


def test_per_call_chunk_size_overrides_the_default(store):
    store.write("obj", [b"x" * 10])
    assert [len(c) for c in store.read_chunks("obj", chunk_size=4)] == [4, 4, 2]


def test_read_of_a_missing_key_raises_before_iteration(store):
    with pytest.raises(SourceMissing, match="'nope/missing'"):
        store.read_chunks("nope/missing")  # no next(): the error comes from the call itself


@pytest.mark.parametrize("call", [lambda s: s.read_chunks("dir"), lambda s: s.open_read("dir"),
                                  lambda s: s.read_chunks("file/child"), lambda s: s.size("missing")],
                         ids=["directory", "directory-open", "through-a-file", "size"])
def test_directories_and_impossible_paths_read_as_missing(store, call):
    store.write("dir/x", [b"1"])
    store.write("file", [b"2"])
    with pytest.raises(SourceMissing):
        call(store)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
@pytest.mark.parametrize("call", [lambda s: s.read_chunks("upload.bin"), lambda s: s.open_read("upload.bin")],
                         ids=["read_chunks", "open_read"])
def test_a_named_pipe_at_a_key_reads_as_missing_at_once(store, call):
    """Found by a review: opening a FIFO for reading blocked until a writer came -- a worker stuck for
    good, beyond any timeout -- and a writer that kept it open fed the output without end."""
    os.mkfifo(os.path.join(store.root, "upload.bin"))
    assert not store.exists("upload.bin")
    outcome: list = []

    def read() -> None:
        try:
            call(store)
        except SourceMissing as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(WAIT_S)  # hang guard only: before the fix it never returned
    assert not reader.is_alive()
    assert [str(e) for e in outcome] == ["object 'upload.bin' does not exist (what is there is not a regular file)"]


def _file_descriptors(monkeypatch) -> tuple[list[int], list[int]]:
    """Spies: the descriptors the store opens on files (not directories), and those it closes."""
    opened, closed = [], []
    real_open, real_close = os.open, os.close

    def spy_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        if not flags & getattr(os, "O_DIRECTORY", 0):
            opened.append(fd)
        return fd

    def spy_close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    monkeypatch.setattr(objectstore.os, "open", spy_open)
    monkeypatch.setattr(objectstore.os, "close", spy_close)
    return opened, closed


def test_file_is_closed_when_iterator_is_exhausted_or_closed_midway(store, monkeypatch):
    store.write("obj", [b"x" * 10])
    opened, closed = _file_descriptors(monkeypatch)
    assert list(store.read_chunks("obj", chunk_size=3)) == [b"xxx"] * 3 + [b"x"]
    assert len(opened) == 1 and closed[-1] == opened[0]
    it = store.read_chunks("obj", chunk_size=3)
    assert next(it) == b"xxx"
    assert len(opened) == 2 and closed[-1] != opened[1]  # still open midway
    it.close()
    assert closed[-1] == opened[1]
    assert next(it, None) is None  # closed: nothing more, and no read of a descriptor given up


def test_file_is_closed_when_an_unstarted_iterator_is_closed(store, monkeypatch):
    store.write("obj", [b"x"])
    opened, closed = _file_descriptors(monkeypatch)
    it = store.read_chunks("obj")
    it.close()
    assert len(opened) == 1 and closed[-1] == opened[0]
    it.close()  # again: nothing (the number may belong to another file by now)
    assert closed.count(opened[0]) == 1


def test_chunks_yielded_from_one_reused_buffer_are_stored_as_they_were(store):
    """Found by a review: ``write`` holds chunks until it has 64 KiB to write; a producer that yields
    one buffer again and again, filled anew each time (a ``readinto`` loop), must not find the last
    filling stored three times."""
    buffer = bytearray(4)

    def refilled():
        for letter in b"abc":
            buffer[:] = bytes([letter]) * 4
            yield buffer
            yield memoryview(buffer)[:2]

    assert store.write("obj", refilled()) == 18
    assert b"".join(store.read_chunks("obj")) == b"aaaaaa" + b"bbbbbb" + b"cccccc"


def test_a_write_the_disk_refuses_midway_leaves_nothing_and_says_why(store, monkeypatch):
    """The descriptor's own ``write`` failing after part of the bytes went out (a full disk):
    OutputWriteError with the errno as its cause, no object, no temporary (the fixture checks)."""
    real_write = os.write

    def full_after_half(fd: int, data) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(objectstore.os, "write", full_after_half)
    with pytest.raises(OutputWriteError) as caught:
        store.write("out/obj", [b"x" * 1000])
    monkeypatch.undo()
    assert caught.value.__cause__.errno == errno.ENOSPC and not store.exists("out/obj")


def test_a_write_the_system_takes_only_in_part_is_finished(store, monkeypatch):
    """``write`` hands its bytes to the descriptor itself, where a write may take less than it is
    given: what is left is written next, and the object is whole."""
    real_write, sizes = os.write, []

    def three_at_a_time(fd: int, data) -> int:
        sizes.append(len(data))
        return real_write(fd, bytes(data[:3]))

    monkeypatch.setattr(objectstore.os, "write", three_at_a_time)
    assert store.write("obj", [b"0123456789", b"abc"]) == 13
    monkeypatch.undo()
    assert sizes == [13, 10, 7, 4, 1]  # the chunks joined into one write, then what each left
    assert b"".join(store.read_chunks("obj")) == b"0123456789abc"


def test_exists_size_delete(store):
    assert not store.exists("a/b")
    assert store.write("a/b", [b"abc", b"", b"de"]) == 5
    assert store.exists("a/b") and store.size("a/b") == 5
    assert not store.exists("a")  # a directory is not an object
    assert store.delete("a/b") is True
    assert store.delete("a/b") is False
    assert not store.exists("a/b")


@pytest.mark.parametrize("error", [errno.EACCES, errno.EIO, errno.EPERM])
def test_exists_raises_what_hides_the_answer_instead_of_saying_no(store, monkeypatch, error):
    """Permission denied or an I/O error does not mean "nothing is there": exists() raises it (the
    caller, told no, would write over what it cannot see). Found by a review: it answered False."""
    store.write("d/obj", [b"x"])

    def failing(key: str) -> os.stat_result:
        raise OSError(error, os.strerror(error), key)

    monkeypatch.setattr(store, "_stat", failing)
    with pytest.raises(OSError) as info:
        store.exists("d/obj")
    assert info.value.errno == error


@pytest.mark.parametrize("error", [errno.ENOENT, errno.ENOTDIR, errno.ELOOP])
def test_exists_says_no_when_the_walk_finds_nothing_there(store, monkeypatch, error):
    def failing(key: str) -> os.stat_result:
        raise OSError(error, os.strerror(error), key)

    monkeypatch.setattr(store, "_stat", failing)
    assert store.exists("d/obj") is False


# -- atomic writes ------------------------------------------------------------------------------

class Boom(Exception):
    pass


def failing_after(chunks, exc):
    yield from chunks
    raise exc


def test_write_publishes_exact_bytes_and_returns_size(store):
    chunks = [b"a" * 1000, bytearray(b"b" * 10), memoryview(b"c" * 5), b""]
    assert store.write("x/y/z.bin", chunks) == 1015
    assert (store.path_for("x/y/z.bin"), b"".join(store.read_chunks("x/y/z.bin"))) == (
        os.path.join(store.root, "x", "y", "z.bin"), b"a" * 1000 + b"b" * 10 + b"c" * 5)


def test_empty_write_creates_an_empty_object(store):
    assert store.write("empty", []) == 0
    assert store.exists("empty") and store.size("empty") == 0


def test_iterable_raising_midway_leaves_no_object_and_no_temp(store):
    with pytest.raises(Boom):
        store.write("new/obj", failing_after([b"part1", b"part2"], Boom("midway")))
    assert not store.exists("new/obj")
    assert store.temp_files() == []


def test_iterable_raising_midway_keeps_the_old_content(store):
    store.write("obj", [b"old content"])
    with pytest.raises(Boom):
        store.write("obj", failing_after([b"new ", b"half"], Boom()))
    assert b"".join(store.read_chunks("obj")) == b"old content"
    assert listing(store.root) == ["obj"]


def test_base_exception_in_the_body_also_cleans_up(store):
    class Abort(BaseException):
        pass

    store.write("obj", [b"old"])
    with pytest.raises(Abort):
        with store.open_write("obj") as f:
            f.write(b"new")
            raise Abort()
    assert b"".join(store.read_chunks("obj")) == b"old"
    assert listing(store.root) == ["obj"]


def test_oserror_from_the_chunks_is_wrapped_with_the_errno_as_cause(store):
    store.write("obj", [b"old"])
    disk_full = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OutputWriteError) as info:
        store.write("obj", failing_after([b"x"], disk_full))
    assert info.value.__cause__ is disk_full
    assert info.value.__cause__.errno == errno.ENOSPC
    assert "'obj'" in str(info.value)
    assert b"".join(store.read_chunks("obj")) == b"old"
    assert listing(store.root) == ["obj"]


def test_fsync_failure_is_wrapped_and_publishes_nothing(store, monkeypatch):
    def broken_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(objectstore.os, "fsync", broken_fsync)
    with pytest.raises(OutputWriteError) as info:
        store.write("obj", [b"data"])
    monkeypatch.undo()
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.EIO
    assert not store.exists("obj")
    assert listing(store.root) == []


def test_fsync_false_skips_fsync(store_root, monkeypatch):
    calls = []
    monkeypatch.setattr(objectstore.os, "fsync", lambda fd: calls.append(fd))
    LocalObjectStore(store_root, fsync=False).write("obj", [b"data"])
    assert calls == []
    LocalObjectStore(store_root, fsync=True).write("obj2", [b"data"])
    assert len(calls) == (2 if os.name == "posix" else 1)  # the file, then (POSIX) its directory


def test_writing_where_a_directory_stands_is_an_output_write_error(store):
    store.write("d/x", [b"1"])
    with pytest.raises(OutputWriteError) as info:
        store.write("d", [b"2"])
    assert isinstance(info.value.__cause__, OSError)
    assert listing(store.root) == ["d/x"]


def test_writing_below_an_object_is_an_output_write_error(store):
    store.write("f", [b"1"])
    with pytest.raises(OutputWriteError) as info:
        store.write("f/child", [b"2"])
    assert isinstance(info.value.__cause__, OSError)
    assert listing(store.root) == ["f"]


def test_temp_file_never_appears_under_the_final_name(store):
    store.write("obj", [b"old"])
    final = store.path_for("obj")
    seen = []

    def chunks():
        for i in range(3):
            # Observed mid-write: the final name still holds the old, complete object.
            with open(final, "rb") as f:
                seen.append((f.read(), sorted(os.listdir(os.path.dirname(final)))))
            seen.append(("readers", b"".join(store.read_chunks("obj"))))
            yield b"new%d" % i

    store.write("obj", chunks())
    assert b"".join(store.read_chunks("obj")) == b"new0new1new2"
    for entry in seen:
        if entry[0] == "readers":
            assert entry[1] == b"old"
        else:
            content, names = entry
            assert content == b"old"
            temps = [n for n in names if n != "obj"]
            assert len(temps) == 1 and TEMP_MARKER in temps[0] and temps[0].startswith(".")
    assert listing(store.root) == ["obj"]


def test_new_object_is_invisible_until_the_write_completes(store):
    with store.open_write("a/new") as f:
        f.write(b"data")
        assert not store.exists("a/new")
        with pytest.raises(SourceMissing):
            store.read_chunks("a/new")
        assert len(store.temp_files()) == 1
    assert b"".join(store.read_chunks("a/new")) == b"data"


def test_a_key_with_a_maximal_segment_can_be_written(store):
    key = "d/" + "s" * MAX_SEGMENT_LENGTH
    validate_key(key)
    store.write(key, [b"x"])
    assert b"".join(store.read_chunks(key)) == b"x"


@pytest.mark.parametrize("segment", ["é" * 150, "é" * 120, "\U0001f600" * 51, "a" * 199 + "é"],
                         ids=["300-bytes", "240-bytes", "204-bytes-emoji", "201-bytes-mixed"])
def test_a_segment_is_limited_in_utf8_bytes_and_the_refusal_names_key_and_limit(segment, store):
    """A segment within the limit in characters but over it in bytes would pass, then fail at the file
    system (file name too long) once a temp-file suffix or an output suffix is added."""
    key = "src/" + segment
    size = len(segment.encode("utf-8"))
    with pytest.raises(InvalidKey) as info:
        validate_key(key)
    assert str(info.value) == (f"object key {key!r} has a segment of {size} bytes (UTF-8), "
                               f"over the limit of {MAX_SEGMENT_BYTES} bytes")
    with pytest.raises(InvalidKey):
        store.write(key, [b"x"])
    assert listing(store.root) == []


@pytest.mark.parametrize("segment", ["é" * (MAX_SEGMENT_BYTES // 2), "\U0001f600" * (MAX_SEGMENT_BYTES // 4),
                                     "x" * (MAX_SEGMENT_BYTES - 2) + "é"], ids=["2-byte", "4-byte", "mixed"])
def test_a_segment_of_exactly_the_byte_limit_can_be_written_its_temp_file_name_fits(segment, store):
    assert len(segment.encode("utf-8")) == MAX_SEGMENT_BYTES
    key = "d/" + segment
    assert validate_key(key) == key
    store.write(key, [b"x"])  # through ".<segment>.tmp-<pid>-<n>~<host>": within 255 bytes
    assert b"".join(store.read_chunks(key)) == b"x"


def test_concurrent_writers_to_one_key_never_interleave(store):
    writers, rounds = 8, 10
    payloads = [bytes([65 + i]) * 50_000 for i in range(writers)]
    start = threading.Barrier(writers)
    errors = []

    def writer(i):
        try:
            start.wait(timeout=10)
            for _ in range(rounds):
                store.write("shared", [payloads[i][:25_000], payloads[i][25_000:]])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert b"".join(store.read_chunks("shared")) in payloads
    assert listing(store.root) == ["shared"]


# -- temp files ----------------------------------------------------------------------------------

def make_temp(store, directory, name, pid, n=0):
    path = os.path.join(store.root, directory, f".{name}{TEMP_MARKER}{pid}-{n}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"partial")
    return path


DEAD_PID = 99_999_999  # above any pid_max (Linux caps it at 2**22), so never a live process


@posix_only
def test_sweep_removes_dead_writers_temps_and_keeps_live_ones(store):
    store.write("a/obj", [b"keep me"])
    dead1 = make_temp(store, "a", "obj", DEAD_PID)
    dead2 = make_temp(store, "b/c", "x", DEAD_PID, 7)
    mine = make_temp(store, "a", "obj", os.getpid(), 3)
    parent = make_temp(store, "", "p", os.getppid())
    assert sorted(store.temp_files()) == sorted([dead1, dead2, mine, parent])

    assert store.sweep_temp_files() == 2
    assert sorted(store.temp_files()) == sorted([mine, parent])
    assert b"".join(store.read_chunks("a/obj")) == b"keep me"
    assert store.sweep_temp_files() == 0
    os.remove(mine)
    os.remove(parent)


@posix_only
def test_sweep_leaves_the_temps_of_another_host_alone(store):
    """On a store shared by several machines a pid of another host means nothing here."""
    from taskqueue.objectstore import HOST_TAG

    theirs = make_temp(store, "a", "obj", f"{DEAD_PID}", "1~0ther0ne")
    ours = make_temp(store, "a", "obj", f"{DEAD_PID}", f"2~{HOST_TAG}")
    assert store.sweep_temp_files() == 1
    assert store.temp_files() == [theirs] and not os.path.exists(ours)
    with store.open_write("b") as f:
        f.write(b"x")
        [writing] = [p for p in store.temp_files() if p != theirs]
        assert writing.endswith(f"~{HOST_TAG}")  # every temp file says where its writer runs
    os.remove(theirs)


@posix_only
def test_sweep_leaves_alone_every_name_the_store_does_not_write(store):
    """Found by a review: any file whose name held ".tmp-" counted as a dead writer's temp file, so a
    store pointed at an existing photo tree lost ``holiday.tmp-edit.jpg`` at the start of a run. Only
    the store's own pattern, ``.<name>.tmp-<pid>-<n>[~<host>]``, is a temp file."""
    users = ["photos/2024/holiday.tmp-edit.jpg", "a/.obj.tmp-notapid-0", "a/.obj.tmp-12-x", "a/obj.tmp-99999999-0",
             "a/.tmp-99999999-0"]
    for name in users:
        os.makedirs(os.path.dirname(os.path.join(store.root, name)), exist_ok=True)
        with open(os.path.join(store.root, name), "wb") as f:
            f.write(b"a user's file")
    dead = make_temp(store, "a", "obj", DEAD_PID)
    assert store.temp_files() == [dead]
    assert store.sweep_temp_files() == 1
    for name in users:
        with open(os.path.join(store.root, name), "rb") as f:
            assert f.read() == b"a user's file"


def test_sweep_does_not_touch_an_in_progress_write(store):
    with store.open_write("obj") as f:
        f.write(b"data")
        assert store.sweep_temp_files() == 0
        assert len(store.temp_files()) == 1
    assert b"".join(store.read_chunks("obj")) == b"data"
