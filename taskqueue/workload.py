"""Deterministic workloads: task lists and the source objects they name.

Everything here is a pure function of its arguments and a seed: the only
randomness is ``random.Random(seed)`` (for task lists) and
``random.Random(f"{seed}:{key}")`` (for each source object; string seeds are
hashed with SHA-512, so they do not depend on ``PYTHONHASHSEED``). The same
seed gives the same task list and byte-identical sources, which is what lets
a benchmark compare two queue implementations on identical work.

A task list is a list of plain dicts (``{"id", "image_key", "variant"}``,
optionally ``"params"``), ready for ``json.dump`` and ``Task.from_dict``.
"""

from __future__ import annotations

import errno
import math
import numbers
import random
from typing import Any, Iterable, Iterator, Mapping, Sequence

from .errors import DependencyMissing, InvalidKey, OutputWriteError
from .objectstore import LocalObjectStore
from .task import VARIANT_PATTERN

try:  # Pillow is optional: without it image keys get byte content.
    from PIL import Image
except ImportError:  # pragma: no cover - depends on the environment
    Image = None

DEFAULT_DUPLICATE_FRACTION = 0.10
DEFAULT_SOURCE_SIZE = (8 * 1024, 32 * 1024)   # bytes, for byte sources
DEFAULT_IMAGE_SIZE = (256, 1024)              # pixels per side, for image sources
DEFAULT_SKIP_PREFIX = "missing/"
MAX_SOURCE_BYTES = 1 << 30
MAX_IMAGE_SIDE = 8192
IMAGE_SUFFIXES = (".jpg", ".png")
BYTES_SUFFIX = ".txt"
PNG_SHARE = 0.2                               # of generated image keys; the rest are .jpg
# A duplicate copies a pair from this many tasks back with probability 1/2, so under
# ~100 concurrent clients some duplicates are in flight together with their original.
RECENT_WINDOW = 16
_CHUNK = 16 * 1024
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def is_image_variant(variant: str) -> bool:
    """True for the variants that need an image source (``gray``, ``thumb_<N>``)."""
    return variant == "gray" or variant.startswith("thumb_")


def parse_variants(spec: str) -> dict[str, float]:
    """Parse ``"gzip=0.7,thumb_128=0.2,gray"`` into ``{name: weight}``; a bare name weighs 1.

    Raises :class:`ValueError` naming the bad item.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"variants: expected 'name=weight,...', got {spec!r}")
    mix: dict[str, float] = {}
    for item in spec.split(","):
        name, sep, weight = item.strip().partition("=")
        try:
            mix[name.strip()] = float(weight) if sep else 1.0
        except ValueError:
            raise ValueError(f"variants: weight of {name.strip()!r} is not a number: {weight!r}") from None
    return _variant_mix(mix)


def generate_tasks(count: int, *, seed: int,
                   duplicate_fraction: float = DEFAULT_DUPLICATE_FRACTION,
                   variants: str | Sequence[str] | Mapping[str, float] = ("gzip",),
                   images: bool | None = None,
                   missing_fraction: float = 0.0) -> list[dict]:
    """Return ``count`` task dicts, a pure function of the arguments.

    ``variants`` is one name, a sequence of names (equal weights) or a mapping
    ``{name: weight}``; each original task draws its variant from it.

    Exactly ``round(count * duplicate_fraction)`` tasks (at most ``count - 1``)
    are duplicates: a new id, the (image_key, variant) pair of an earlier task,
    at a seeded position; half copy one of the previous ``RECENT_WINDOW``
    originals, so some run concurrently with it. Every other task names a pair
    no other original uses.

    Image keys end in ``.jpg``/``.png`` when ``images`` is true, in ``.txt``
    when it is false, and by default (None) by variant: images for ``gray``
    and ``thumb_<N>``, ``.txt`` otherwise. ``missing_fraction`` of originals
    (rounded) get a key under ``missing/``, which :func:`create_sources` never
    creates. Ids are ``s<seed>-<index>``, unique within the list.

    Raises :class:`ValueError` naming the bad argument.
    """
    count = _count(count)
    seed = _seed(seed)
    duplicate_fraction = _fraction("duplicate_fraction", duplicate_fraction)
    missing_fraction = _fraction("missing_fraction", missing_fraction)
    mix = _variant_mix(variants)
    if images is not None and not isinstance(images, bool):
        raise ValueError(f"images must be True, False or None, got {images!r}")

    rng = random.Random(seed)
    duplicates = min(int(count * duplicate_fraction + 0.5), max(count - 1, 0))
    # Position 0 is always an original, so every duplicate has one to copy.
    duplicate_at = set(rng.sample(range(1, count), duplicates)) if duplicates else set()
    originals = count - duplicates
    missing_at = set(rng.sample(range(originals), int(originals * missing_fraction + 0.5)))
    names, weights = list(mix), list(mix.values())

    tasks: list[dict] = []
    pairs: list[tuple[str, str]] = []  # (image_key, variant) of each original, in order
    for index in range(count):
        if index in duplicate_at:
            window = pairs[-RECENT_WINDOW:] if rng.random() < 0.5 else pairs
            image_key, variant = rng.choice(window)
        else:
            variant = rng.choices(names, weights)[0]
            n = len(pairs)
            want_image = is_image_variant(variant) if images is None else images
            suffix = (".png" if rng.random() < PNG_SHARE else ".jpg") if want_image else BYTES_SUFFIX
            folder = DEFAULT_SKIP_PREFIX.rstrip("/") if n in missing_at else "src"
            image_key = f"{folder}/s{seed}/{n // 1000:03d}/obj-{n:06d}{suffix}"
            pairs.append((image_key, variant))
        tasks.append({"id": f"s{seed}-{index:06d}", "image_key": image_key, "variant": variant})
    return tasks


def create_sources(store: LocalObjectStore, tasks: Iterable[Any], *, seed: int,
                   source_size: tuple[int, int] = DEFAULT_SOURCE_SIZE,
                   image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
                   images: bool | None = None,
                   skip_prefix: str | None = DEFAULT_SKIP_PREFIX) -> int:
    """Create every source object ``tasks`` name, once per image key; return how many were created.

    ``tasks`` holds task dicts or :class:`~taskqueue.task.Task` objects. An
    object that already exists is left alone (so a second call creates
    nothing); keys starting with ``skip_prefix`` are never created (that is
    how a task file shows a missing source; None or "" skips nothing); items
    without a valid image key are skipped, since the task loader rejects them,
    and so is a key that clashes with another as file and directory (``a`` and
    ``a/b``): the first made stands, the other's task finds its source missing.

    Content depends only on ``seed`` and the key. Keys ending in
    ``.jpg``/``.png`` become real JPEG/PNG images (gradients plus seeded
    noise, each side seeded within ``image_size``) when Pillow is importable
    and ``images`` is not False; ``images=True`` without Pillow raises
    :class:`DependencyMissing`, and by default (``images=None``) without Pillow
    they are not made at all: text under an image's name would stay there once
    Pillow is installed, and fail its task for good (``images=False`` asks for
    text under every key). Every other key gets compressible text-like
    bytes, their length seeded within ``source_size``, generated and written
    in chunks. Blocks for the writes (each is atomic, see the store).
    """
    seed = _seed(seed)
    low, high = _range("source_size", source_size, 0, MAX_SOURCE_BYTES)
    image_range = _range("image_size", image_size, 1, MAX_IMAGE_SIDE)
    if images is not None and not isinstance(images, bool):
        raise ValueError(f"images must be True, False or None, got {images!r}")
    if images and Image is None:
        raise DependencyMissing("images=True needs Pillow, which is not installed (pip install pillow)")
    if skip_prefix is not None and not isinstance(skip_prefix, str):
        raise ValueError(f"skip_prefix must be a string or None, got {skip_prefix!r}")
    make_images = Image is not None and images is not False

    created = 0
    seen: set[str] = set()
    for task in tasks:
        key = task.get("image_key") if isinstance(task, Mapping) else getattr(task, "image_key", None)
        if key in seen or not isinstance(key, str) or (skip_prefix and key.startswith(skip_prefix)):
            continue
        if images is None and not make_images and key.lower().endswith(IMAGE_SUFFIXES):
            continue  # no Pillow: made once it is installed, never as text under an image's name
        seen.add(key)
        try:
            if store.exists(key):  # validates the key, and refuses one escaping the root
                continue
        except InvalidKey:
            continue
        rng = random.Random(f"{seed}:{key}")
        try:
            if make_images and key.lower().endswith(IMAGE_SUFFIXES):
                _write_image(store, key, rng, image_range)
            else:
                store.write(key, _text_chunks(rng, rng.randint(low, high)))
        except OutputWriteError as exc:
            if getattr(exc.__cause__, "errno", None) not in (errno.ENOTDIR, errno.EISDIR):
                raise
            continue  # a file where its directory goes, or a directory where it goes: not made (its task
            # finds its source missing); the other sources are made
        created += 1
    return created


# -- content ---------------------------------------------------------------------

def _text_chunks(rng: random.Random, size: int) -> Iterator[bytes]:
    """``size`` bytes of words from a small seeded vocabulary: gzip shrinks them to about a third."""
    vocab = ["".join(rng.choices(_LETTERS, k=rng.randint(2, 10))) for _ in range(rng.randint(64, 256))]
    remaining = size
    while remaining > 0:
        words = rng.choices(vocab, k=_CHUNK // 4)
        for i in range(12, len(words), 13):
            words[i] += "\n"
        chunk = " ".join(words).encode("ascii")[:remaining]
        remaining -= len(chunk)
        yield chunk


def _write_image(store: LocalObjectStore, key: str, rng: random.Random,
                 side: tuple[int, int]) -> None:
    width, height = rng.randint(*side), rng.randint(*side)
    resampling = getattr(Image, "Resampling", Image)
    red = Image.linear_gradient("L").resize((width, height))
    green = Image.radial_gradient("L").resize((width, height))
    if rng.random() < 0.5:
        red, green = green.transpose(getattr(Image, "Transpose", Image).FLIP_LEFT_RIGHT), red
    # Coarse seeded noise scaled up gives soft blobs; finer noise gives the encoder real detail.
    blue = _noise(rng, width, height, 32, resampling.BILINEAR)
    png = key.lower().endswith(".png")
    # A PNG gets blocky noise and fewer levels, like the graphics PNGs usually hold: per-pixel
    # noise would make it megabytes and slow to write.
    fine = _noise(rng, width, height, 8 if png else 1, resampling.NEAREST)
    image = Image.blend(Image.merge("RGB", (red, green, blue)),
                        Image.merge("RGB", (fine, fine, fine)), 0.12)
    # Pillow writes into the store's atomic temporary file in its own buffered chunks.
    with store.open_write(key) as out:
        if png:
            image.point(lambda v: v & 0xF8).save(out, format="PNG", compress_level=3)
        else:
            image.save(out, format="JPEG", quality=90)


def _noise(rng: random.Random, width: int, height: int, block: int, resample: int):
    w, h = max(1, width // block), max(1, height // block)
    noise = Image.frombytes("L", (w, h), rng.randbytes(w * h))
    return noise if (w, h) == (width, height) else noise.resize((width, height), resample)


# -- photographs ------------------------------------------------------------------
#
# For the benchmark's ``thumbs`` scenario: sources shaped like what a photo site receives (camera
# and phone sizes up to 24 MP, some stored sideways with an EXIF orientation, some cut-outs with
# alpha), generated from a seed at benchmark time, never committed.

PHOTO_SIZES = ((6000, 4000), (4032, 3024), (3000, 2000), (1600, 1200), (800, 600))  # 24, 12, 6, 1.9, 0.5 MP
ALPHA_MAX_PIXELS = 2_000_000   # cut-outs with alpha are PNGs, at web-graphic sizes
MAX_PHOTO_SIDE = 16384
EXIF_ORIENTATION = 0x0112


def photo_specs(count: int, *, seed: int, sizes: Sequence[tuple[int, int]] = PHOTO_SIZES,
                alpha: bool = True, prefix: str = "photos") -> list[dict]:
    """Descriptions of ``count`` distinct photos: ``{"key", "width", "height", "orientation", "alpha"}``.

    Sizes cycle through ``sizes`` (width, height; default :data:`PHOTO_SIZES`,
    largest first). With ``alpha``, on every second pass through the sizes,
    photos of at most :data:`ALPHA_MAX_PIXELS` are PNG cut-outs with alpha;
    every other photo is a JPEG, and one in three of those is stored landscape
    with EXIF orientation 6 or 8 (a phone held upright). Pure function of the
    arguments.
    """
    count, seed = _count(count), _seed(seed)
    if not sizes or any(not isinstance(size, (tuple, list)) or len(size) != 2
                        or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_PHOTO_SIDE
                               for v in size) for size in sizes):
        raise ValueError(f"sizes must be (width, height) pairs of integers from 1 to {MAX_PHOTO_SIDE}, "
                         f"got {sizes!r}")
    specs = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        cut_out = alpha and (i // len(sizes)) % 2 == 1 and width * height <= ALPHA_MAX_PIXELS
        orientation = 1 if cut_out else (1, 6, 1, 8, 1, 1)[i % 6]
        name = f"p{i:03d}-{width}x{height}" + (f"-o{orientation}" if orientation != 1 else "")
        specs.append({"key": f"{prefix}/s{seed}/{name}{'.png' if cut_out else '.jpg'}", "width": width,
                      "height": height, "orientation": orientation, "alpha": cut_out})
    return specs


def write_photo(store: LocalObjectStore, spec: Mapping[str, Any], *, seed: int) -> int:
    """Write the photo ``spec`` describes (see :func:`photo_specs`); return its size in bytes.

    Smooth gradients, soft blobs and per-pixel sensor noise, so decoders and
    encoders do the work a real photograph makes them do: a JPEG (quality 90,
    with the EXIF orientation when not 1) or a PNG cut-out with a soft-edged
    alpha. The content depends only on ``seed`` and the key. Needs Pillow.
    """
    if Image is None:
        raise DependencyMissing("photos need Pillow, which is not installed (pip install pillow)")
    key, width, height = spec["key"], spec["width"], spec["height"]
    rng = random.Random(f"{seed}:{key}")
    resampling = getattr(Image, "Resampling", Image)
    red = Image.linear_gradient("L").rotate(rng.choice((0, 90, 180, 270))).resize((width, height))
    green = Image.radial_gradient("L").resize((width, height))
    blue = _noise(rng, width, height, 64, resampling.BICUBIC)
    sensor = _noise(rng, width, height, 1, resampling.NEAREST)
    image = Image.blend(Image.merge("RGB", (red, green, blue)), Image.merge("RGB", (sensor,) * 3), 0.1)
    with store.open_write(key) as out:
        if spec["alpha"]:
            # A soft-edged ellipse: opaque inside, transparent outside (a product shot cut out).
            ramp = bytes(255 if v < 96 else 0 if v > 144 else (144 - v) * 255 // 48 for v in range(256))
            image.putalpha(Image.radial_gradient("L").resize((width, height)).point(list(ramp)))
            image.save(out, format="PNG", compress_level=3)
        else:
            exif = Image.Exif()
            if spec["orientation"] != 1:
                exif[EXIF_ORIENTATION] = spec["orientation"]
            image.save(out, format="JPEG", quality=90, exif=exif.tobytes())
        return out.tell()


# -- validation --------------------------------------------------------------------

def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"count must be an integer >= 0, got {value!r}")
    return value


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"seed must be an integer, got {value!r}")
    return value


def _fraction(name: str, value: Any) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or not 0.0 <= value < 1.0):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _range(name: str, value: Any, low: int, high: int) -> tuple[int, int]:
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
            or not low <= value[0] <= value[1] <= high):
        raise ValueError(f"{name} must be (min, max) integers with {low} <= min <= max <= {high}, "
                         f"got {value!r}")
    return value[0], value[1]


def _variant_mix(variants: Any) -> dict[str, float]:
    if isinstance(variants, str):
        mix = {variants: 1.0}
    elif isinstance(variants, Mapping):
        mix = dict(variants)
    elif isinstance(variants, (list, tuple)):
        mix = {name: 1.0 for name in variants}
    else:
        raise ValueError(f"variants must be a name, a list of names or a {{name: weight}} mapping, "
                         f"got {variants!r}")
    for name, weight in mix.items():
        if not isinstance(name, str) or not VARIANT_PATTERN.fullmatch(name):
            raise ValueError(f"variants: {name!r} is not a variant name")
        if (isinstance(weight, bool) or not isinstance(weight, numbers.Real)
                or not math.isfinite(weight) or weight < 0):
            raise ValueError(f"variants: weight of {name!r} must be a finite number >= 0, got {weight!r}")
    if not mix or sum(mix.values()) <= 0:
        raise ValueError(f"variants: at least one variant needs a weight > 0, got {variants!r}")
    return {name: float(weight) for name, weight in mix.items()}
