"""The Pillow pipeline behind the image variants: open safely, decode small, orient, colour, flatten, encode.

:func:`prepare` turns a source file into the image to publish; :func:`encode`
writes it. The steps, in order, and why each is where it is:

1. **Header first.** The source is identified among :data:`ACCEPTED_FORMATS`
   from its header alone, and its pixel count checked against the limit
   *before a single pixel is decoded*: a larger image is :class:`ImageTooLarge`,
   naming its dimensions. (Pillow's own process-wide bomb check,
   ``PIL.Image.MAX_IMAGE_PIXELS``, runs inside ``Image.open``; this module
   opens through the same format plugins without it, so the per-processor
   limit is the one that applies, and the global is left alone.)
   A WebP is charged :data:`WEBP_PIXEL_COST` times its pixels: libwebp needs
   about 16 bytes a pixel to decode, against 3-4 for the other decoders, and
   allocates its canvas while Pillow opens the file, so its size is read from
   the first 30 bytes here, before Pillow's plugin sees them.
   Animated or multi-page sources give their first frame.
2. **Decode small.** A JPEG thumbnail decodes at 1/2..1/8 scale (``draft``,
   the decoder's DCT scaling, to at least twice the box); a grayscale JPEG
   without a colour profile decodes straight to luma. Other formats decode
   whole, then ``thumbnail`` shrinks them by an integer factor (``reduce``)
   before the final Lanczos pass (``reducing_gap=2``).
3. **Working mode.** Palette and 1-bit images become RGB/RGBA/L (a palette
   resized as such would be resampled with NEAREST); 16-bit samples are scaled
   to 8 bits (``v / 257``), never clipped, and so are 32-bit integer ones holding
   16-bit data; float samples in 0..1 are scaled by 255, in 0..255 taken as they
   are, and any other 32-bit samples refused (:class:`UnsupportedSource`: no
   scale to read them by); a ``tRNS`` colour key becomes alpha (a 16-bit one is
   matched at 16 bits, before scaling).
4. **Colour.** An embedded ICC profile (RGB or CMYK) is converted to sRGB
   with ImageCms and the output carries no profile: browsers read an untagged
   image as sRGB, a thumbnail stays small, and a CMYK or grayscale output
   could not keep the source's profile anyway. Without ImageCms, CMYK is
   converted with Pillow's formula and an RGB output keeps the RGB profile
   (colour-managed viewers still show it right). A profile that does not fit
   the image or cannot be read is ignored; a grayscale profile is dropped.
5. **Transparency** is flattened over the background when the output cannot
   hold alpha (jpeg) or a background was asked for; png and webp keep it.
6. **Orientation** (EXIF tag 274, values 2-8) is applied last, to the
   smallest image: a transposition commutes with fitting into a square box.
   (A TIFF is the exception: Pillow's decoder applies its tag while loading.)
7. **Encode** with fixed options and none of the source's metadata: no EXIF
   (so no GPS and no orientation tag), XMP, comments or text chunks.

Every step is deterministic: the same source and :class:`Rendition` give
the same bytes (for one Pillow build).
"""

from __future__ import annotations

import contextlib
import errno
import io
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from .errors import ImageTooLarge, UnsupportedSource
from .samples import check_wide_samples, to_eight_bits, unit_floats_to_eight_bits

try:  # Pillow is optional: the processor checks ``Image`` before calling in here.
    from PIL import Image
    # Importing a plugin registers it with Image.OPEN; WebP registers only if Pillow was built with it.
    from PIL import (BmpImagePlugin, GifImagePlugin, JpegImagePlugin,  # noqa: F401
                     PngImagePlugin, TiffImagePlugin, WebPImagePlugin)
except ImportError:  # pragma: no cover - depends on the environment
    Image = None
try:  # littlecms; a Pillow build may lack it
    from PIL import ImageCms
except ImportError:  # pragma: no cover - depends on the Pillow build
    ImageCms = None

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")  # JPEG includes MPO (camera JPEGs)
REDUCING_GAP = 2.0        # decode/reduce to at least this many times the box, then Lanczos
MAX_SIDE = {"jpeg": 65500, "webp": 16383, "png": 2 ** 31 - 1}  # the encoders' own limits, per side
WHITE = (255, 255, 255)
ORIENTATION_TAG = 0x0112
TILE_WIDTH_TAG, TILE_LENGTH_TAG = 322, 323  # TIFF tags: the size of each tile a decoder allocates
# libwebp decodes at ~16 bytes a pixel, ~4x the others: a WebP may have a quarter of the pixel limit.
WEBP_PIXEL_COST = 4
_HEADER_BYTES = 30        # enough for every WebP header's size (VP8X: bytes 24..29)
_VP8_START_CODE = b"\x9d\x01\x2a"
_VP8L_SIGNATURE = 0x2F
_PERCEPTUAL = 0           # ICC rendering intent (ImageCms.Intent.PERCEPTUAL): the usual one for photos
# A seek to an offset the file itself gave (a corrupt header), not a failing read: the file's fault.
_BAD_OFFSET = (errno.EINVAL, errno.EOVERFLOW)
# Errors Pillow raises for a malformed file (its OSErrors without an errno are handled apart).
_MALFORMED = (SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError, KeyError)


@dataclass(frozen=True)
class Rendition:
    """What to make: ``size`` is the longest side (None: full size); ``background`` None means white
    where alpha cannot be kept, and alpha kept where it can."""

    size: int | None
    gray: bool
    format: str = "jpeg"
    quality: int = 85
    background: tuple[int, int, int] | None = None


@dataclass
class Prepared:
    """The image to encode and the ICC profile to embed with it (None: untagged sRGB)."""

    image: "Image.Image"
    icc_profile: bytes | None


def prepare(source: BinaryIO, spec: Rendition, *, max_pixels: int, name: str) -> Prepared:
    """Decode ``source`` and apply steps 1-6 of the module docstring; blocks for the reads and the work.

    Raises :class:`ImageTooLarge` (over ``max_pixels``, a WebP over ``max_pixels / 4``, from the header),
    :class:`UnsupportedSource` (not an accepted image, truncated, corrupt);
    an ``OSError`` with an errno (a failing read) and a ``MemoryError`` propagate for
    ``retry.classify`` to judge. ``name`` is the object key, for messages.
    """
    with _decoding(name):
        im = _open(source, name, max_pixels)
        jpeg = im.format in ("JPEG", "MPO")  # MPO: a camera JPEG with extra images (depth, preview)
        if spec.size is not None and jpeg:
            # On an unloaded JPEG, thumbnail() drafts (DCT-scaled decode), loads, reduces and resizes.
            im.thumbnail((spec.size, spec.size), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
        elif spec.gray and jpeg and not _usable_profile(im):
            im.draft("L", None)  # decode luma only: a third of the memory, no colour to convert
        im.load()  # no-op if done; a JPEG already within the box is not loaded by thumbnail()
        # Pillow's TIFF decoder applies the orientation tag itself (10.0 leaves the tag behind).
        orientation = 1 if im.format == "TIFF" else _orientation(im)
        icc = im.info.get("icc_profile") or None
        im = _working_mode(im, name)  # ValueError for a mode Pillow cannot convert: the source's fault
    if spec.size is not None and not jpeg:  # reduce() by an integer factor first, then Lanczos
        im.thumbnail((spec.size, spec.size), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    im, keep_icc = _to_srgb(im, icc)
    if im.mode in ("RGBA", "LA") and (spec.format == "jpeg" or spec.background is not None):
        im = _flatten(im, spec.background or WHITE)
    if spec.gray:
        if im.mode not in ("L", "LA"):
            im = im.convert("LA" if im.mode == "RGBA" else "L")
        keep_icc = None  # an RGB profile does not describe a grayscale image
    if orientation in _TRANSPOSE:
        im = im.transpose(_TRANSPOSE[orientation])
    return Prepared(im, keep_icc)


def encode(prepared: Prepared, out: BinaryIO, spec: Rendition, *, name: str = "") -> None:
    """Write the image in ``spec.format`` to ``out``, with fixed encoder options and no source metadata.

    Raises :class:`ImageTooLarge` if the format cannot hold the image's size. ``name`` is the
    source's object key, for messages.
    """
    im = prepared.image
    limit = MAX_SIDE[spec.format]
    if max(im.size) > limit:
        raise ImageTooLarge(f"object {name!r}: the output would be {im.width}x{im.height}; {spec.format} "
                            f"holds at most {limit} pixels per side")
    im.info = {}  # never carry the source's EXIF, XMP, comments or text chunks into the output
    extra = {"icc_profile": prepared.icc_profile} if prepared.icc_profile else {}
    if spec.format == "jpeg":
        im.save(out, format="JPEG", quality=spec.quality, optimize=False, progressive=False, **extra)
    elif spec.format == "png":
        im.save(out, format="PNG", compress_level=6, optimize=False, **extra)
    else:
        im.save(out, format="WEBP", quality=spec.quality, method=4, lossless=False, **extra)


# -- steps ------------------------------------------------------------------------------------

def _open(source: BinaryIO, name: str, max_pixels: int):
    """The source's header parsed by the first accepted format that claims it; nothing decoded yet.

    What ``Image.open`` does, restricted to :data:`ACCEPTED_FORMATS` (no
    Ghostscript for EPS, no exotic decoders) and without its global bomb check,
    whose place the pixel limit takes. A WebP's size is checked before its
    plugin runs: libwebp allocates the whole canvas in there.
    """
    header = source.read(_HEADER_BYTES)
    prefix = header[:16]  # what Image.open gives the plugins' accept functions
    for fmt in ACCEPTED_FORMATS:
        factory, accept = Image.OPEN.get(fmt, (None, None))
        if factory is None:
            continue
        claimed = accept(prefix) if accept else True
        if not claimed or isinstance(claimed, str):  # a str is Pillow's "looks like it, but unsupported"
            continue
        if fmt == "WEBP":
            size = _webp_size(header)
            if size is None:  # libwebp would fail on it too, but only after allocating what it declares
                raise UnsupportedSource(f"object {name!r} is not a decodable image: its WebP header "
                                        f"gives no size")
            _check_pixels(name, *size, fmt, max_pixels)
        source.seek(0)
        try:
            im = factory(source, "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # not this format after all: the next may claim it (as Image.open does)
        _check_pixels(name, *im.size, fmt, max_pixels)
        _check_tiles(im, name, max_pixels)
        return im
    raise UnsupportedSource(f"object {name!r} is not an image in an accepted format "
                            f"({', '.join(f.lower() for f in ACCEPTED_FORMATS)})")


def _check_pixels(name: str, width: int, height: int, fmt: str, max_pixels: int) -> None:
    """Refuse an image over the pixel limit: ``max_pixels``, or ``max_pixels / WEBP_PIXEL_COST`` for
    a WebP (libwebp's decoder needs ~16 bytes a pixel: 100 MP would cost ~1.5 GiB in one worker)."""
    pixels = width * height
    if fmt == "WEBP":
        limit = max_pixels // WEBP_PIXEL_COST
        which = f"pixels for WebP (TQ_MAX_IMAGE_PIXELS / {WEBP_PIXEL_COST}: libwebp needs ~16 bytes a pixel)"
    else:
        limit, which = max_pixels, "pixels (TQ_MAX_IMAGE_PIXELS)"
    if pixels > limit:
        raise ImageTooLarge(f"object {name!r} is {width}x{height} ({pixels} pixels), over the limit of "
                            f"{limit} {which}; nothing was decoded")


def _webp_size(header: bytes) -> tuple[int, int] | None:
    """(width, height) from a WebP's first 30 bytes (RIFF, size, WEBP, then the first chunk's
    fourcc and size at 12..19); None if no size can be read there.

    * ``VP8 `` (lossy): a 3-byte frame tag, the start code 9d 01 2a, then 14-bit width and height,
      little-endian, at 26..29 (their top 2 bits are an upscaling hint, not the size);
    * ``VP8L`` (lossless): the signature byte 0x2f, then width-1 and height-1 in 14 bits each;
    * ``VP8X`` (extended: alpha, animation, metadata): the canvas's width-1 and height-1 in 24 bits
      each at 24..29.
    """
    if len(header) < _HEADER_BYTES:
        return None
    chunk = header[12:16]
    if chunk == b"VP8 " and header[23:26] == _VP8_START_CODE:
        width, height = struct.unpack("<HH", header[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and header[20] == _VP8L_SIGNATURE:
        bits = int.from_bytes(header[21:25], "little")
        return (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(header[24:27], "little") + 1, int.from_bytes(header[27:30], "little") + 1
    return None


def _check_tiles(im, name: str, max_pixels: int) -> None:
    """Refuse a TIFF whose tiles are over the pixel limit: libtiff allocates a whole tile to decode
    into, whatever the image's size (an 8x8 image can declare one 46336x46336 tile: 2 GB at once)."""
    tags = getattr(im, "tag_v2", None)
    if im.format != "TIFF" or tags is None:
        return
    tile_width, tile_length = tags.get(TILE_WIDTH_TAG), tags.get(TILE_LENGTH_TAG)
    if isinstance(tile_width, int) and isinstance(tile_length, int) and tile_width * tile_length > max_pixels:
        raise ImageTooLarge(f"object {name!r} declares {tile_width}x{tile_length} tiles "
                            f"({tile_width * tile_length} pixels each), over the limit of {max_pixels} pixels "
                            f"(TQ_MAX_IMAGE_PIXELS); nothing was decoded")


@contextlib.contextmanager
def _decoding(name: str) -> Iterator[None]:
    """Map Pillow's failures on a bad file to permanent errors; a real I/O error stays an OSError.

    A ``MemoryError`` (an allocation refused while decoding) is deliberately not caught: it says
    nothing about the file, and ``retry.classify`` makes it transient.
    """
    try:
        yield
    except Image.DecompressionBombError as exc:  # a plugin's own check (GIF frames, TIFF tiles)
        raise ImageTooLarge(f"object {name!r}: {exc}") from exc
    except OSError as exc:
        if exc.errno is not None and exc.errno not in _BAD_OFFSET:  # EIO, EAGAIN...: retry.classify decides
            raise
        # Pillow's own decode failures ("image file is truncated", UnidentifiedImageError) carry no errno.
        raise UnsupportedSource(f"object {name!r} is not a decodable image: {exc}") from exc
    except _MALFORMED as exc:
        raise UnsupportedSource(f"object {name!r} is not a decodable image: {exc}") from exc


def _working_mode(im, name: str = ""):
    """RGB, RGBA, L, LA or CMYK: modes every later step handles (see step 3).

    Raises :class:`UnsupportedSource` for 32-bit samples (mode I or F) outside the ranges whose scale
    is known (see :func:`~taskqueue.samples.check_wide_samples`).
    """
    mode = im.mode
    keyed = "transparency" in im.info
    if mode in ("RGB", "L"):
        return im.convert(mode + "A") if keyed else im
    if mode in ("RGBA", "LA", "CMYK"):
        return im
    if mode in ("P", "PA"):
        return im.convert("RGBA" if keyed or mode == "PA" else "RGB")
    if mode == "1":
        gray = im.convert("L")  # 0 and 255
        if not keyed:
            return gray
        # A 1-bit PNG's key is the sample 0 or 1; Pillow gives it as 0/255 (older versions: 0/1).
        gray.info["transparency"] = 255 if im.info["transparency"] else 0
        return gray.convert("LA")
    if mode.startswith("I"):  # I;16, I;16B, I (16-bit PNG, TIFF): scale 0..65535 to 0..255
        if mode == "I":  # 32 bits a sample: only 16-bit data held in it has a scale to read it by
            check_wide_samples(im, name, 0, 65535)
        key = im.info.get("transparency")
        return to_eight_bits(im, key if isinstance(key, int) else None)
    if mode in ("RGBa", "La"):
        return im.convert(mode[:-1] + "A")
    if mode == "F":
        _, high = check_wide_samples(im, name, 0, 255)
        # Within 0..1 the samples are read as fractions of white, the usual scale of float images
        # (read as 0..255 they all came out black); within 0..255, as 8-bit values.
        return unit_floats_to_eight_bits(im) if high <= 1 else im.convert("L")
    return im.convert("RGB")  # RGBX, YCbCr, LAB, HSV


def _usable_profile(im) -> bool:
    """Whether :func:`_to_srgb` would convert this image through its embedded profile."""
    icc = im.info.get("icc_profile")
    return bool(icc) and ImageCms is not None and _profile_space(icc) in (b"RGB ", b"CMYK")


def _profile_space(icc: bytes) -> bytes:
    """The colour space signature in an ICC header (bytes 16-19): b'RGB ', b'CMYK', b'GRAY'..."""
    return bytes(icc[16:20]) if len(icc) >= 20 else b""


def _to_srgb(im, icc: bytes | None):
    """(image in RGB/RGBA/L/LA, profile to embed or None): step 4 of the module docstring."""
    base = {"RGB": "RGB", "RGBA": "RGB", "CMYK": "CMYK"}.get(im.mode)
    space = _profile_space(icc) if icc else b""
    fits = base is not None and space == {"RGB": b"RGB ", "CMYK": b"CMYK"}[base]
    if fits and ImageCms is not None:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            if im.mode == "RGB":  # in place: a full-size gray of a large photo needs no second copy
                ImageCms.profileToProfile(im, source, srgb, renderingIntent=_PERCEPTUAL, inPlace=True)
                return im, None
            alpha = im.getchannel("A") if im.mode == "RGBA" else None
            out = ImageCms.profileToProfile(im.convert(base) if alpha is not None else im, source, srgb,
                                            renderingIntent=_PERCEPTUAL, outputMode="RGB")
            if alpha is not None:
                out.putalpha(alpha)
            return out, None
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # an unreadable profile: treat the image as untagged
    elif fits and base == "RGB":
        return im, icc  # no ImageCms: keep the RGB profile, colour-managed viewers apply it
    return (im.convert("RGB") if im.mode == "CMYK" else im), None


def _flatten(im, background: tuple[int, int, int]):
    """Composite an RGBA/LA image over an opaque ``background``; returns RGB."""
    rgba = im.convert("RGBA") if im.mode == "LA" else im
    out = Image.new("RGB", rgba.size, background)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _orientation(im) -> int:
    """The EXIF orientation (1-8); 1 when absent, invalid or unreadable (the pixels are still good)."""
    try:
        value = im.getexif().get(ORIENTATION_TAG)
    except (*_MALFORMED, TypeError, AttributeError, OSError):  # a broken EXIF block, in Pillow's words
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


_TRANSPOSE = {} if Image is None else {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}
