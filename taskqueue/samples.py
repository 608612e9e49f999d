"""Samples wider than 8 bits, brought to 8: 16-bit gray, 32-bit integers holding 16-bit data, floats.

Part of the image pipeline (:mod:`taskqueue.imaging`, step 3). Every conversion
works a band of :data:`BAND_ROWS` rows at a time, so that a large image costs a
byte or so a pixel beside the decoded source, not the full-size 32-bit copies
Pillow's ``point`` goes through. Pillow is imported by the caller's module:
this one is only reached once it is there.
"""

from __future__ import annotations

from .errors import UnsupportedSource

try:
    from PIL import Image, ImageChops
except ImportError:  # pragma: no cover - imaging checks for Pillow before calling in here
    Image = ImageChops = None

BAND_ROWS = 256  # rows converted at a time


def check_wide_samples(im, name: str, low: float, high: float) -> tuple[float, float]:
    """The extrema of an I or F image; :class:`UnsupportedSource` unless within ``low..high``.

    A 32-bit integer or float sample has no scale of its own: data outside the ranges that have
    one (16-bit integers; floats in 0..1 or 0..255) would be clipped to black or white, silently,
    so it is refused, naming the range found. ``getextrema`` is one pass in C, with no copy.
    """
    found_low, found_high = im.getextrema()
    if not (low <= found_low and found_high <= high):  # also refuses NaN, which compares false
        kind, accepted = (("32-bit integer", "0..65535 (16-bit data)") if im.mode == "I"
                          else ("floating-point", "0..1 or 0..255"))
        shown = (f"{found_low} to {found_high}" if im.mode == "I"
                 else f"{found_low:.6g} to {found_high:.6g}")
        raise UnsupportedSource(f"object {name!r} is a {kind} image (mode {im.mode}) with samples from "
                                f"{shown}; only {accepted} can be scaled to 8 bits")
    return found_low, found_high


def unit_floats_to_eight_bits(im):
    """A float (F) image with samples in 0..1 as L, each sample times 255, rounded.

    A band of rows at a time, as in :func:`to_eight_bits`: scaled whole, ``point`` would make a
    second full-size float image (4 bytes a pixel).
    """
    out = Image.new("L", im.size)
    for top in range(0, im.height, BAND_ROWS):
        band = im.crop((0, top, im.width, min(top + BAND_ROWS, im.height)))
        out.paste(band.point(lambda v: v * 255 + 0.5).convert("L"), (0, top))  # convert() truncates
    return out


def to_eight_bits(im, key: int | None = None):
    """A 16-bit (or 32-bit integer) gray image as L, each sample scaled by 1/257 and rounded; as LA
    when ``key`` (a PNG ``tRNS`` colour key) is given, the samples equal to it transparent.

    A band of rows at a time: converted whole, the two 32-bit copies Pillow's ``point`` goes through
    (4 bytes a pixel each) came to 10 bytes a pixel at the peak. Here the peak is the source, the
    result (L: 1 byte a pixel; LA: 4, as Pillow stores it) and one band.
    """
    out = Image.new("L" if key is None else "LA", im.size)
    for top in range(0, im.height, BAND_ROWS):
        band = im.crop((0, top, im.width, min(top + BAND_ROWS, im.height))).convert("I")
        gray = band.point(lambda v: v * (1 / 257) + 0.5).convert("L")
        if key is not None:
            # The key is compared at 16 bits: 257 values share an 8-bit one, and only one is keyed.
            gray = Image.merge("LA", (gray, _key_alpha(band, key)))
        out.paste(gray, (0, top))
    return out


def _key_alpha(band, key: int):
    """Alpha (L) for an I image: 0 where a sample equals ``key``, 255 elsewhere.

    With ``point`` (only ``v * scale + offset`` on I) and the clipping of I to L: ``v - key`` is
    non-zero in L only above the key, ``key - v`` only below it, so their maximum is 0 only at it.
    """
    # Written as additions and products: older Pillow's ``point`` understands nothing else.
    above = band.point(lambda v: v + -key).convert("L")
    below = band.point(lambda v: v * -1 + key).convert("L")
    return ImageChops.lighter(above, below).point([0] + [255] * 255)
