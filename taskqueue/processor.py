"""The Processor makes one variant of one source object, with optional injected faults.

Variants:

* ``gzip`` -- streaming zlib compression of the source (standard library only);
  parameter ``level`` (0-9, default 6).
* ``thumb_<N>`` -- the source fitted within N x N pixels (1-4096, never
  enlarged). Needs Pillow.
* ``gray`` -- a grayscale image of the source at full size. Needs Pillow.

Image variants take ``format`` (``jpeg``, the default, ``png`` or ``webp``),
``quality`` (1-95, default 85; jpeg and webp) and ``background`` (``#rrggbb``
or ``#rgb``: what transparency is flattened over; white by default where the
format cannot hold alpha). How an image is made (orientation, colour,
transparency, metadata, limits) is :mod:`taskqueue.imaging`'s business.

Outputs are deterministic (the same source, variant and parameters give the
same bytes) and live at ``variants/<variant>/<image_key><suffix>``, derived
from the idempotency key: the suffix follows the format (``.jpg``, ``.png``,
``.webp``, ``.gz``), and a non-default format is part of the key too (see
:func:`taskqueue.task.make_idempotency_key`), so a retry or a re-run rewrites
the same object and two formats never share one.

Fault injection (:class:`FaultConfig`) is decided by a ``random.Random`` seeded
with ``(seed, idempotency key, attempt)``: any implementation that processes
the same task on the same attempt with the same seed sees the same fault.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

from . import imaging
from .errors import (DependencyMissing, InjectedPermanentError, InjectedTransientError, InvalidKey,
                     InvalidParameter, ProcessingTimeout, UnknownVariant)
from .objectstore import LocalObjectStore, validate_key
from .task import DEFAULT_OUTPUT_FORMAT, Task

MAX_THUMB_SIZE = 4096
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000   # TQ_MAX_IMAGE_PIXELS: above a 108 MP camera, below a bomb
FORMAT_SUFFIXES = {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}
LOSSLESS_FORMATS = frozenset({"png"})
_THUMB = re.compile(r"thumb_([1-9][0-9]{0,3})")
_COLOUR = re.compile(r"#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})")


@dataclass(frozen=True)
class FaultConfig:
    """Faults to inject, per attempt.

    ``latency_s`` plus ``uniform(0, jitter_s)`` is slept before the work;
    then a permanent error with probability ``permanent_rate``, else a
    transient one with probability ``transient_rate``. If ``timeout_s`` is
    set and the attempt's latency (or the work itself) goes past it, the
    attempt stops at the timeout with :class:`ProcessingTimeout` (transient).
    """

    latency_s: float = 0.0
    jitter_s: float = 0.0
    transient_rate: float = 0.0
    permanent_rate: float = 0.0
    timeout_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("latency_s", "jitter_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("transient_rate", "permanent_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value!r}")
        if self.transient_rate + self.permanent_rate > 1.0:
            raise ValueError("transient_rate + permanent_rate must not exceed 1")
        if self.timeout_s is not None and (not isinstance(self.timeout_s, (int, float))
                                           or not math.isfinite(self.timeout_s) or self.timeout_s <= 0):
            raise ValueError(f"timeout_s must be a finite number > 0 or None, got {self.timeout_s!r}")

    @property
    def active(self) -> bool:
        return bool(self.latency_s or self.jitter_s or self.transient_rate
                    or self.permanent_rate or self.timeout_s)

    def decide(self, idempotency_key: str, attempt: int) -> tuple[float, str | None]:
        """The (latency, fault) for one attempt: fault is None, 'transient' or 'permanent'."""
        rng = random.Random(f"{self.seed}:{idempotency_key}:{attempt}")
        latency = self.latency_s + (rng.uniform(0.0, self.jitter_s) if self.jitter_s else 0.0)
        draw = rng.random()
        if draw < self.permanent_rate:
            return latency, "permanent"
        if draw < self.permanent_rate + self.transient_rate:
            return latency, "transient"
        return latency, None


@dataclass(frozen=True)
class Output:
    """A published variant: its object key and size in bytes."""

    key: str
    size: int


class Processor:
    """Makes variants. Thread-safe and stateless between calls; share one across workers.

    ``max_image_pixels`` (width x height) is the largest source image decoded;
    a larger one fails with :class:`~taskqueue.errors.ImageTooLarge`, found
    from its header. ``sleep`` and ``clock`` are injectable so tests can step
    time without freezing it.
    """

    def __init__(self, store: LocalObjectStore, faults: FaultConfig | None = None, *,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if (isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, int)
                or max_image_pixels <= 0):
            raise ValueError(f"max_image_pixels must be an integer greater than 0, got {max_image_pixels!r}")
        self.store = store
        self.faults = faults or FaultConfig()
        self.max_image_pixels = max_image_pixels
        self._sleep = sleep
        self._clock = clock

    # -- validation ------------------------------------------------------------

    @staticmethod
    def check(task: Task) -> None:
        """Raise :class:`UnknownVariant` or :class:`InvalidParameter` if ``task`` cannot be made.

        Pure: no I/O. The loader calls it to reject bad items before any work.
        """
        _plan(task)

    @staticmethod
    def output_key(task: Task) -> str:
        return _plan(task).output_key

    # -- work --------------------------------------------------------------------

    def process(self, task: Task, attempt: int = 1) -> Output:
        """Make ``task``'s variant and publish it; return the :class:`Output`.

        Blocks for the injected latency and the I/O. Raises a
        :class:`~taskqueue.errors.TransientError` (injected fault, timeout) or
        a :class:`~taskqueue.errors.PermanentError` (bad variant or parameter,
        missing or undecodable source, image too large, Pillow absent);
        ``OSError``s from the store propagate wrapped as documented there.
        """
        plan = _plan(task)
        started = self._clock()
        deadline = started + self.faults.timeout_s if self.faults.timeout_s else None
        if self.faults.active:
            latency, fault = self.faults.decide(task.idempotency_key, attempt)
            if deadline is not None and latency > self.faults.timeout_s:
                self._sleep(self.faults.timeout_s)
                raise ProcessingTimeout(
                    f"attempt {attempt} timed out after {self.faults.timeout_s:.3f}s (injected latency)")
            if latency:
                self._sleep(latency)
            if fault == "permanent":
                raise InjectedPermanentError(f"injected permanent fault on attempt {attempt}")
            if fault == "transient":
                raise InjectedTransientError(f"injected transient fault on attempt {attempt}")
        key = plan.output_key
        size = plan.run(self, task, key, deadline)
        return Output(key=key, size=size)

    def _timed(self, chunks: Iterator[bytes], deadline: float | None) -> Iterator[bytes]:
        """Pass chunks through, raising :class:`ProcessingTimeout` once past ``deadline``."""
        for chunk in chunks:
            if deadline is not None and self._clock() > deadline:
                raise ProcessingTimeout(f"processing passed its {self.faults.timeout_s:.3f}s timeout")
            yield chunk


# -- variant plans -----------------------------------------------------------------

OUTPUT_PREFIX = "variants/"


class _Gzip:
    """``gzip``: the source compressed as it streams past."""

    params = ("level",)

    def __init__(self, task: Task) -> None:
        self.level = _integer(task, "level", 0, 9, 6)
        self.output_key = _output_key(task, ".gz")

    def run(self, processor: Processor, task: Task, key: str, deadline: float | None) -> int:
        # wbits=31: a gzip container whose header has no name and mtime 0, so output is deterministic.
        compressor = zlib.compressobj(self.level, zlib.DEFLATED, 31)
        with contextlib.closing(processor.store.read_chunks(task.image_key)) as source:

            def compressed() -> Iterator[bytes]:
                for chunk in processor._timed(source, deadline):
                    out = compressor.compress(chunk)
                    if out:
                        yield out
                yield compressor.flush()

            return processor.store.write(key, compressed())


class _Image:
    """``thumb_<N>`` (``size`` N) and ``gray`` (``size`` None): a Pillow rendition, see :mod:`.imaging`."""

    params = ("format", "quality", "background")

    def __init__(self, task: Task, size: int | None) -> None:
        fmt = task.params.get("format", DEFAULT_OUTPUT_FORMAT)
        if not isinstance(fmt, str) or fmt not in FORMAT_SUFFIXES:
            raise InvalidParameter(f"field 'params.format': {fmt!r} is not an output format "
                                   f"(one of: {', '.join(FORMAT_SUFFIXES)})")
        if fmt in LOSSLESS_FORMATS and "quality" in task.params:
            raise InvalidParameter(f"field 'params.quality': format {fmt!r} is lossless and takes no "
                                   f"quality (quality applies to jpeg and webp)")
        self.rendition = imaging.Rendition(size=size, gray=size is None, format=fmt,
                                           quality=_integer(task, "quality", 1, 95, 85),
                                           background=_colour(task, "background"))
        self.output_key = _output_key(task, FORMAT_SUFFIXES[fmt])

    def run(self, processor: Processor, task: Task, key: str, deadline: float | None) -> int:
        if imaging.Image is None:
            raise DependencyMissing(f"variant {task.variant!r} needs Pillow, which is not installed "
                                    f"(pip install pillow)")
        with processor.store.open_read(task.image_key) as source:
            prepared = imaging.prepare(source, self.rendition, max_pixels=processor.max_image_pixels,
                                       name=task.image_key)
        if deadline is not None and processor._clock() > deadline:
            raise ProcessingTimeout(f"processing passed its {processor.faults.timeout_s:.3f}s timeout")
        with processor.store.open_write(key) as out:
            imaging.encode(prepared, out, self.rendition, name=task.image_key)
            return out.tell()


def _plan(task: Task) -> _Gzip | _Image:
    """The plan for ``task``, its parameters parsed; raises :class:`InvalidTask` naming the field."""
    if task.image_key.startswith(OUTPUT_PREFIX) or task.image_key == OUTPUT_PREFIX.rstrip("/"):
        raise InvalidParameter(f"field 'image_key': {task.image_key[:80]!r} is or is under {OUTPUT_PREFIX!r}, "
                               f"which is reserved for outputs (a task could overwrite another's output, or a "
                               f"source there stand where every output's directory goes)")
    variant = task.variant
    if variant == "gzip":
        kind, size = _Gzip, None
    elif variant == "gray":
        kind, size = _Image, None
    else:
        match = _THUMB.fullmatch(variant)
        if match is None:
            if variant.startswith("thumb_"):
                raise InvalidParameter(f"field 'variant': {variant!r} needs a size from 1 to "
                                       f"{MAX_THUMB_SIZE} pixels, e.g. thumb_128")
            raise UnknownVariant(f"field 'variant': unknown variant {variant!r} "
                                 f"(known: gzip, gray, thumb_<N>)")
        size = int(match.group(1))
        if size > MAX_THUMB_SIZE:
            raise InvalidParameter(f"field 'variant': {variant!r} asks for {size} px, "
                                   f"at most {MAX_THUMB_SIZE}")
        kind = _Image
    for name in task.params:
        if name not in kind.params:
            raise InvalidParameter(f"field 'params.{name}': unknown parameter for variant "
                                   f"{variant!r} (allowed: {', '.join(kind.params)})")
    plan = _Gzip(task) if kind is _Gzip else _Image(task, size)
    try:
        validate_key(plan.output_key)
    except InvalidKey as exc:
        raise InvalidParameter(f"field 'image_key': too long for its output key: {exc}") from None
    return plan


def _output_key(task: Task, suffix: str) -> str:
    return f"{OUTPUT_PREFIX}{task.variant}/{task.image_key}{suffix}"


def _integer(task: Task, name: str, low: int, high: int, default: int) -> int:
    value = task.params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidParameter(f"field 'params.{name}': {value!r} is not an integer "
                               f"from {low} to {high}")
    return value


def _colour(task: Task, name: str) -> tuple[int, int, int] | None:
    """``#rrggbb`` or ``#rgb`` (hex, either case) as an RGB tuple; None when absent."""
    if name not in task.params:
        return None
    value = task.params[name]
    match = _COLOUR.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidParameter(f"field 'params.{name}': {value!r} is not a colour: expected '#rrggbb' "
                               f"or '#rgb' in hex, e.g. '#ffffff'")
    digits = match.group(1)
    if len(digits) == 3:
        digits = "".join(d * 2 for d in digits)
    return tuple(int(digits[i:i + 2], 16) for i in (0, 2, 4))
