"""The Processor makes one variant of one source object, with optional injected faults.

Variants:

* ``gzip`` -- streaming zlib compression of the source (standard library only);
  parameter ``level`` (0-9, default 6).
* ``thumb_<N>`` -- a JPEG whose longest side is at most N pixels (1-4096);
  parameter ``quality`` (1-95, default 85). Needs Pillow.
* ``gray`` -- a grayscale JPEG of the source at full size; parameter
  ``quality``. Needs Pillow.

Outputs are deterministic (the same source, variant and parameters give the
same bytes) and live at ``variants/<variant>/<image_key><suffix>``, derived
from the idempotency key, so a retry or a re-run rewrites the same object.

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

from .errors import (DependencyMissing, InjectedPermanentError, InjectedTransientError, InvalidKey,
                     InvalidParameter, ProcessingTimeout, UnknownVariant, UnsupportedSource)
from .objectstore import LocalObjectStore, validate_key
from .task import Task

try:  # Pillow is optional: without it, image variants fail permanently and say why.
    from PIL import Image, UnidentifiedImageError
except ImportError:  # pragma: no cover - depends on the environment
    Image = None
    UnidentifiedImageError = OSError

MAX_THUMB_SIZE = 4096
_THUMB = re.compile(r"thumb_([1-9][0-9]{0,3})")


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

    ``sleep`` and ``clock`` are injectable so tests can step time without
    freezing it.
    """

    def __init__(self, store: LocalObjectStore, faults: FaultConfig | None = None, *,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.store = store
        self.faults = faults or FaultConfig()
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
        return _plan(task).output_key(task)

    # -- work --------------------------------------------------------------------

    def process(self, task: Task, attempt: int = 1) -> Output:
        """Make ``task``'s variant and publish it; return the :class:`Output`.

        Blocks for the injected latency and the I/O. Raises a
        :class:`~taskqueue.errors.TransientError` (injected fault, timeout) or
        a :class:`~taskqueue.errors.PermanentError` (bad variant or parameter,
        missing or undecodable source, Pillow absent); ``OSError``s from the
        store propagate wrapped as documented there.
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
        key = plan.output_key(task)
        size = plan.run(self, task, key, deadline)
        return Output(key=key, size=size)

    def _timed(self, chunks: Iterator[bytes], deadline: float | None) -> Iterator[bytes]:
        """Pass chunks through, raising :class:`ProcessingTimeout` once past ``deadline``."""
        for chunk in chunks:
            if deadline is not None and self._clock() > deadline:
                raise ProcessingTimeout(f"processing passed its {self.faults.timeout_s:.3f}s timeout")
            yield chunk


# -- variant plans -----------------------------------------------------------------

class _Gzip:
    suffix = ".gz"
    params = {"level": (0, 9, 6)}

    def output_key(self, task: Task) -> str:
        return f"{OUTPUT_PREFIX}{task.variant}/{task.image_key}{self.suffix}"

    def run(self, processor: Processor, task: Task, key: str, deadline: float | None) -> int:
        level = _param(task, "level", self.params)
        # wbits=31: a gzip container whose header has no name and mtime 0, so output is deterministic.
        compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
        with contextlib.closing(processor.store.read_chunks(task.image_key)) as source:

            def compressed() -> Iterator[bytes]:
                for chunk in processor._timed(source, deadline):
                    out = compressor.compress(chunk)
                    if out:
                        yield out
                yield compressor.flush()

            return processor.store.write(key, compressed())


class _Image:
    suffix = ".jpg"
    params = {"quality": (1, 95, 85)}

    def __init__(self, size: int | None) -> None:
        self.size = size  # None: keep full size, make it grayscale

    def output_key(self, task: Task) -> str:
        return f"{OUTPUT_PREFIX}{task.variant}/{task.image_key}{self.suffix}"

    def run(self, processor: Processor, task: Task, key: str, deadline: float | None) -> int:
        if Image is None:
            raise DependencyMissing(f"variant {task.variant!r} needs Pillow, which is not installed "
                                    f"(pip install pillow)")
        quality = _param(task, "quality", self.params)
        with processor.store.open_read(task.image_key) as source:
            try:
                image = Image.open(source)
                if self.size is not None and image.format == "JPEG":
                    image.draft("RGB", (self.size, self.size))  # decode at reduced scale
                image.load()
            except (UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
                raise UnsupportedSource(f"object {task.image_key!r} is not a decodable image: {exc}") \
                    from exc
            except OSError as exc:
                if exc.errno is not None:  # a real I/O error (EIO, EAGAIN...): retry.classify decides
                    raise
                # Pillow's own decode failures ("image file is truncated") carry no errno.
                raise UnsupportedSource(f"object {task.image_key!r} is not a decodable image: {exc}") \
                    from exc
        if self.size is not None:
            image = image.convert("RGB")
            image.thumbnail((self.size, self.size), Image.Resampling.LANCZOS
                            if hasattr(Image, "Resampling") else Image.LANCZOS)
        else:
            image = image.convert("L")
        if deadline is not None and processor._clock() > deadline:
            raise ProcessingTimeout(f"processing passed its {processor.faults.timeout_s:.3f}s timeout")
        with processor.store.open_write(key) as out:
            image.save(out, format="JPEG", quality=quality, optimize=False)
            size = out.tell()
        return size


OUTPUT_PREFIX = "variants/"


def _plan(task: Task):
    if task.image_key.startswith(OUTPUT_PREFIX):
        raise InvalidParameter(f"field 'image_key': {task.image_key[:80]!r} is under {OUTPUT_PREFIX!r}, "
                               f"which is reserved for outputs (a task could overwrite another's output)")
    variant = task.variant
    if variant == "gzip":
        plan = _Gzip()
    elif variant == "gray":
        plan = _Image(None)
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
        plan = _Image(size)
    for name in task.params:
        if name not in plan.params:
            raise InvalidParameter(f"field 'params.{name}': unknown parameter for variant "
                                   f"{variant!r} (allowed: {', '.join(plan.params) or 'none'})")
    for name in plan.params:
        _param(task, name, plan.params)
    try:
        validate_key(plan.output_key(task))
    except InvalidKey as exc:
        raise InvalidParameter(f"field 'image_key': too long for its output key: {exc}") from None
    return plan


def _param(task: Task, name: str, spec: dict) -> int:
    low, high, default = spec[name]
    value = task.params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidParameter(f"field 'params.{name}': {value!r} is not an integer "
                               f"from {low} to {high}")
    return value
