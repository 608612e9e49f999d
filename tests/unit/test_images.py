"""Image variants on photographs as they come: orientation, transparency, formats, colour, metadata, limits.

Every source is built with Pillow inside the test and written to a real object
store in ``tmp_path``; every assertion reads the published output back. Tests
that need Pillow skip with a reason saying so; parameter validation and keys
are checked without it.
"""

from __future__ import annotations

import io
import os
import random
import struct
import subprocess
import sys
import zlib

try:
    import resource
except ImportError:  # Windows
    resource = None

import pytest

import taskqueue.imaging as imaging
from taskqueue.errors import ImageTooLarge, InvalidParameter, PermanentError, UnsupportedSource
from taskqueue.processor import DEFAULT_MAX_IMAGE_PIXELS, Processor
from taskqueue.task import Task

try:
    from PIL import ExifTags, Image, ImageChops, ImageFile
except ImportError:
    Image = None

needs_pillow = pytest.mark.skipif(Image is None, reason="Pillow is not installed: image variants cannot be made")
needs_cms = pytest.mark.skipif(getattr(imaging, "ImageCms", None) is None,
                               reason="Pillow is not installed, or was built without ImageCms (littlecms)")

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def task(variant, image_key="img/src", **params):
    return Task(id="t1", image_key=image_key, variant=variant, params=params)


def encoded(im, fmt, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def make(store, variant, data, key="img/src", **params):
    """Write ``data`` as the source, make the variant, return the output opened with Pillow (loaded)."""
    store.write(key, [data])
    out = Processor(store).process(task(variant, key, **params))
    im = Image.open(io.BytesIO(b"".join(store.read_chunks(out.key))))
    im.load()
    return im


def close(actual, expected, tolerance=12):
    """Pixel values equal within ``tolerance`` per channel (JPEG is lossy)."""
    actual = actual if isinstance(actual, tuple) else (actual,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    return len(actual) == len(expected) and all(abs(a - e) <= tolerance for a, e in zip(actual, expected))


def quadrants(width, height, colours=(RED, GREEN, BLUE, WHITE), mode="RGB"):
    """An image whose four quadrants (top-left, top-right, bottom-left, bottom-right) have ``colours``."""
    im = Image.new(mode, (width, height))
    w, h = width // 2, height // 2
    for (x, y), colour in zip(((0, 0), (w, 0), (0, h), (w, h)), colours):
        im.paste(colour, (x, y, width if x else w, height if y else h))
    return im


def quadrant_colours(im):
    """The colour at the centre of each quadrant, in the order of :func:`quadrants`."""
    w, h = im.size
    return [im.getpixel((x, y)) for y in (h // 4, 3 * h // 4) for x in (w // 4, 3 * w // 4)]


def with_exif(orientation=None, make_=None, gps=False) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    if make_ is not None:
        exif[ExifTags.Base.Make] = make_
    if gps:
        info = exif.get_ifd(ExifTags.IFD.GPSInfo)
        info[ExifTags.GPS.GPSLatitudeRef] = "N"
        info[ExifTags.GPS.GPSLatitude] = (52.0, 22.0, 1.5)
        info[ExifTags.GPS.GPSLongitudeRef] = "E"
        info[ExifTags.GPS.GPSLongitude] = (4.0, 53.0, 27.0)
    return exif.tobytes()


# -- orientation -----------------------------------------------------------------------------------

# How ImageOps.exif_transpose displays each orientation; a source is stored as the inverse of that.
if Image is not None:
    T = Image.Transpose
    DISPLAY = {1: None, 2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE,
               6: T.ROTATE_270, 7: T.TRANSVERSE, 8: T.ROTATE_90}
    INVERSE = {None: None, T.ROTATE_270: T.ROTATE_90, T.ROTATE_90: T.ROTATE_270}


def stored_as(shown, orientation):
    """The pixels a camera stores for an image ``shown`` upright with EXIF ``orientation``."""
    method = DISPLAY[orientation]
    method = INVERSE.get(method, method)
    return shown if method is None else shown.transpose(method)


@needs_pillow
@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("variant, fmt", [("thumb_60", "jpeg"), ("thumb_60", "png"), ("gray", "jpeg")])
def test_exif_orientation_is_applied_and_not_written(store, orientation, variant, fmt):
    shown = quadrants(80, 120)  # portrait, as a phone held upright shows it
    source = encoded(stored_as(shown, orientation), "JPEG", quality=95, exif=with_exif(orientation))
    out = make(store, variant, source, format=fmt)
    expected_size = (40, 60) if variant.startswith("thumb") else (80, 120)
    assert out.size == expected_size
    expected = [Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0)) if variant == "gray" else c
                for c in (RED, GREEN, BLUE, WHITE)]
    assert all(close(a, e, 24) for a, e in zip(quadrant_colours(out), expected)), quadrant_colours(out)
    assert ExifTags.Base.Orientation not in out.getexif()


@needs_pillow
@pytest.mark.parametrize("container", ["PNG", "WEBP", "TIFF"])
def test_orientation_is_read_from_png_webp_and_tiff_too(store, container):
    shown = quadrants(60, 90)
    kwargs = {"tiffinfo": {ExifTags.Base.Orientation: 6}} if container == "TIFF" else {"exif": with_exif(6)}
    extra = {"lossless": True} if container == "WEBP" else {}
    out = make(store, "thumb_30", encoded(stored_as(shown, 6), container, **kwargs, **extra), format="png")
    assert out.size == (20, 30)
    assert all(close(a, e) for a, e in zip(quadrant_colours(out), (RED, GREEN, BLUE, WHITE)))


@needs_pillow
def test_a_phone_portrait_comes_out_upright(store):
    # The issue's case: stored landscape 451x300 with orientation 6, shown 300x451.
    shown = quadrants(300, 451)
    out = make(store, "thumb_128", encoded(stored_as(shown, 6), "JPEG", exif=with_exif(6)))
    assert out.size == (85, 128)
    gray = make(store, "gray", encoded(stored_as(shown, 6), "JPEG", exif=with_exif(6)))
    assert gray.size == (300, 451)


@needs_pillow
def test_unreadable_or_invalid_orientation_is_ignored(store):
    out = make(store, "thumb_40", encoded(quadrants(80, 40), "JPEG", quality=95, exif=with_exif(9)))
    assert out.size == (40, 20)
    assert all(close(a, e, 24) for a, e in zip(quadrant_colours(out), (RED, GREEN, BLUE, WHITE)))


# -- transparency ------------------------------------------------------------------------------------

def half_transparent(mode):
    """Left half opaque red, right half fully transparent over black (what made black thumbnails)."""
    rgba = Image.new("RGBA", (64, 32), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 32, 32))
    if mode == "RGBA":
        return encoded(rgba, "PNG")
    if mode == "LA":
        la = Image.new("LA", (64, 32), (0, 0))
        la.paste((80, 255), (0, 0, 32, 32))
        return encoded(la, "PNG")
    if mode in ("P-png", "P-gif"):
        p = Image.new("P", (64, 32), 1)
        p.putpalette([255, 0, 0, 0, 0, 0] + [0] * 762)
        p.paste(0, (0, 0, 32, 32))
        return encoded(p, "PNG" if mode == "P-png" else "GIF", transparency=1)
    if mode == "RGB-trns":  # a tRNS colour key: black is transparent
        return encoded(rgba.convert("RGB"), "PNG", transparency=(0, 0, 0))
    raise AssertionError(mode)


LEFT, RIGHT = (16, 16), (48, 16)


@needs_pillow
@pytest.mark.parametrize("mode", ["RGBA", "P-png", "P-gif", "RGB-trns", "LA"])
def test_transparency_over_jpeg_is_white_by_default(store, mode):
    out = make(store, "thumb_32", half_transparent(mode))
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (32, 16))
    assert close(out.getpixel((24, 8)), WHITE, 6)
    left = (80, 80, 80) if mode == "LA" else RED
    assert close(out.getpixel((6, 8)), left)


@needs_pillow
@pytest.mark.parametrize("mode", ["RGBA", "P-gif"])
def test_transparency_over_a_given_background(store, mode):
    out = make(store, "thumb_64", half_transparent(mode), background="#3366cc")
    assert close(out.getpixel(RIGHT), (0x33, 0x66, 0xCC), 8)
    assert close(out.getpixel(LEFT), RED)
    short = make(store, "thumb_64", half_transparent(mode), background="#0F0")
    assert close(short.getpixel(RIGHT), GREEN, 8)


@needs_pillow
def test_partial_transparency_is_blended_with_the_background(store):
    im = Image.new("RGBA", (32, 32), (0, 0, 0, 128))
    out = make(store, "thumb_32", encoded(im, "PNG"))
    assert close(out.getpixel((16, 16)), (127, 127, 127), 4)


@needs_pillow
def test_gray_of_a_transparent_image_is_flattened_too(store):
    out = make(store, "gray", half_transparent("RGBA"))
    assert (out.mode, out.size) == ("L", (64, 32))
    assert close(out.getpixel(RIGHT), 255, 6)
    assert close(out.getpixel(LEFT), 76, 8)  # red's luma


@needs_pillow
@pytest.mark.parametrize("fmt, source", [("png", "RGBA"), ("png", "P-gif"), ("webp", "RGBA"), ("webp", "P-png")])
def test_png_and_webp_keep_alpha(store, fmt, source):
    out = make(store, "thumb_64", half_transparent(source), format=fmt)
    assert (out.format, out.mode) == (fmt.upper(), "RGBA")
    assert out.getpixel(RIGHT)[3] <= 4
    assert out.getpixel(LEFT)[3] >= 251 and close(out.getpixel(LEFT)[:3], RED)


@needs_pillow
def test_gray_png_keeps_alpha_as_la(store):
    out = make(store, "gray", half_transparent("RGBA"), format="png")
    assert (out.mode, out.getpixel(RIGHT)[1], out.getpixel(LEFT)) == ("LA", 0, (76, 255))


@needs_pillow
@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_a_background_flattens_png_and_webp_as_well(store, fmt):
    out = make(store, "thumb_64", half_transparent("RGBA"), format=fmt, background="#000000")
    assert out.mode == "RGB"
    assert close(out.getpixel(RIGHT), BLACK, 6)


# -- formats, keys and determinism ----------------------------------------------------------------------

@needs_pillow
@pytest.mark.parametrize("fmt, suffix, pil_format", [("jpeg", ".jpg", "JPEG"), ("png", ".png", "PNG"),
                                                     ("webp", ".webp", "WEBP")])
@pytest.mark.parametrize("variant", ["thumb_50", "gray"])
def test_output_format_sets_the_object_and_its_suffix(store, make_image, variant, fmt, suffix, pil_format):
    store.write("img/src", [make_image(100, 60)])
    out = Processor(store).process(task(variant, format=fmt))
    assert out.key == f"variants/{variant}/img/src{suffix}"
    with Image.open(io.BytesIO(b"".join(store.read_chunks(out.key)))) as im:
        assert im.format == pil_format
        assert im.size == ((50, 30) if variant == "thumb_50" else (100, 60))
        if variant == "gray" and fmt != "webp":
            assert im.mode == "L"
        if variant == "gray" and fmt == "webp":  # WebP has no grayscale mode: equal channels
            r, g, b = im.convert("RGB").split()
            assert ImageChops.difference(r, g).getextrema()[1] <= 2
            assert ImageChops.difference(g, b).getextrema()[1] <= 2


def test_formats_differ_in_key_and_output_key_and_jpeg_is_the_default():
    default, jpeg, png, webp = (task("thumb_64", format=f) if f else task("thumb_64")
                                for f in (None, "jpeg", "png", "webp"))
    assert default.idempotency_key == jpeg.idempotency_key == "img/src:thumb_64"  # keys made before `format`
    assert png.idempotency_key == "img/src:thumb_64.png"
    assert webp.idempotency_key == "img/src:thumb_64.webp"
    assert len({Processor.output_key(t) for t in (default, png, webp)}) == 3
    assert Processor.output_key(jpeg) == Processor.output_key(default) == "variants/thumb_64/img/src.jpg"
    assert task("gzip").idempotency_key == "img/src:gzip"


@needs_pillow
def test_two_formats_of_one_image_through_the_engine_make_two_objects(tmp_path, store, make_image):
    from taskqueue.config import Config
    from taskqueue.engine import TaskQueue

    store.write("img/src", [make_image(90, 60)])
    tasks = [Task(id=f"t-{fmt}", image_key="img/src", variant="thumb_32", params={"format": fmt})
             for fmt in ("jpeg", "png", "webp")]
    with TaskQueue(tmp_path / "tasks.db", store, config=Config(workers=2, fsync_outputs=False)) as tq:
        results = [tq.submit(t).result(timeout=60) for t in tasks]
    assert [r.deduplicated for r in results] == [False, False, False]
    assert [r.output_key for r in results] == [f"variants/thumb_32/img/src{s}" for s in (".jpg", ".png", ".webp")]
    assert all(store.exists(r.output_key) for r in results)


def photo_like() -> bytes:
    """A JPEG exercising every step at once: orientation, a colour profile, EXIF with GPS, noise."""
    im = quadrants(300, 200)
    im = Image.blend(im, Image.effect_noise((300, 200), 60).convert("RGB"), 0.3)
    profile = icc_profile(SRGB_RED, SRGB_GREEN, SRGB_BLUE)
    return encoded(im, "JPEG", quality=90, exif=with_exif(6, "SecretCam", gps=True), icc_profile=profile)


@needs_pillow
@pytest.mark.parametrize("variant", ["thumb_64", "gray"])
@pytest.mark.parametrize("params", [{}, {"format": "png"}, {"format": "webp", "quality": 70},
                                    {"background": "#102030"}])
def test_the_same_task_gives_the_same_bytes_on_a_rerun(store, variant, params):
    sources = {"img/photo": photo_like(), "img/alpha": half_transparent("RGBA")}
    for key, data in sources.items():
        store.write(key, [data])
        t = task(variant, key, **params)
        first = b"".join(store.read_chunks(Processor(store).process(t).key))
        second = b"".join(store.read_chunks(Processor(store).process(t).key))
        assert first == second


@needs_pillow
def test_quality_changes_webp_but_png_refuses_it(store, make_image):
    store.write("img/src", [make_image(120, 120)])
    low = Processor(store).process(task("thumb_100", format="webp", quality=10))
    low_bytes = store.size(low.key)
    high = Processor(store).process(task("thumb_100", format="webp", quality=95))
    assert low_bytes < store.size(high.key)
    with pytest.raises(InvalidParameter, match=r"field 'params.quality': format 'png' is lossless"):
        Processor.check(task("thumb_100", format="png", quality=50))


# -- parameters: refused by check() before any work, naming the field and the value --------------------

@pytest.mark.parametrize("params, field, shown", [
    ({"format": "gif"}, "params.format", "'gif'"),
    ({"format": "JPEG"}, "params.format", "'JPEG'"),
    ({"format": "jpg"}, "params.format", "'jpg'"),
    ({"format": 5}, "params.format", "5"),
    ({"format": None}, "params.format", "None"),
    ({"background": "red"}, "params.background", "'red'"),
    ({"background": "#12345"}, "params.background", "'#12345'"),
    ({"background": "#gggggg"}, "params.background", "'#gggggg'"),
    ({"background": "ffffff"}, "params.background", "'ffffff'"),
    ({"background": ""}, "params.background", "''"),
    ({"background": 16777215}, "params.background", "16777215"),
    ({"background": None}, "params.background", "None"),
    ({"format": "png", "quality": 80}, "params.quality", "'png'"),
    ({"quality": 0, "format": "webp"}, "params.quality", "0"),
    ({"colour": "#fff"}, "params.colour", "unknown parameter"),
])
@pytest.mark.parametrize("variant", ["thumb_64", "gray"])
def test_bad_image_parameters_are_refused_by_check_naming_field_and_value(variant, params, field, shown):
    with pytest.raises(InvalidParameter) as info:
        Processor.check(task(variant, **params))
    message = str(info.value)
    assert message.startswith(f"field '{field}': ")
    assert shown in message


@pytest.mark.parametrize("params", [{"format": "jpeg"}, {"format": "png"}, {"format": "webp", "quality": 1},
                                    {"background": "#fff"}, {"background": "#A0b1C2"},
                                    {"format": "png", "background": "#000000"}])
def test_good_image_parameters_pass_check(params):
    Processor.check(task("thumb_64", **params))
    Processor.check(task("gray", **params))


@pytest.mark.parametrize("params", [{"format": "png"}, {"background": "#fff"}])
def test_gzip_takes_no_image_parameters(params):
    with pytest.raises(InvalidParameter, match=r"field 'params\.\w+': unknown parameter for variant 'gzip'"):
        Processor.check(task("gzip", **params))


def test_the_task_file_loader_refuses_a_bad_background_before_any_work(tmp_path):
    from taskqueue.taskfile import TaskFileError, load_tasks

    path = tmp_path / "tasks.json"
    path.write_text('[{"id": "a", "image_key": "img/a.jpg", "variant": "thumb_64",'
                    ' "params": {"background": "rgb(1,2,3)"}}]')
    with pytest.raises(TaskFileError) as info:
        load_tasks(path, max_bytes=1 << 20, check=Processor.check)
    assert "field 'params.background': 'rgb(1,2,3)' is not a colour" in str(info.value)


@pytest.mark.parametrize("bad", [0, -1, True, "100", 1.5, None])
def test_the_pixel_limit_is_validated(store, bad):
    with pytest.raises(ValueError, match="max_image_pixels"):
        Processor(store, max_image_pixels=bad)


def test_the_default_pixel_limit_is_about_a_hundred_megapixels():
    from taskqueue.config import Config
    assert DEFAULT_MAX_IMAGE_PIXELS == Config().max_image_pixels == 100_000_000


@pytest.mark.parametrize("raw, error", [("0", "must be greater than 0"), ("-5", "must be greater than 0"),
                                        ("lots", "must be an integer"), ("1e8", "must be an integer")])
def test_tq_max_image_pixels_is_validated_naming_the_variable(raw, error):
    from taskqueue.config import Config
    from taskqueue.errors import ConfigError
    with pytest.raises(ConfigError, match=f"TQ_MAX_IMAGE_PIXELS \\(environment\\): {error}, got '{raw}'"):
        Config.from_env(environ={"TQ_MAX_IMAGE_PIXELS": raw}, dotenv_path=None)
    assert Config.from_env(environ={"TQ_MAX_IMAGE_PIXELS": "2500"}, dotenv_path=None).max_image_pixels == 2500


# -- colour ----------------------------------------------------------------------------------------

SRGB_RED, SRGB_GREEN, SRGB_BLUE = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)


def icc_profile(red, green, blue, gamma=2.2) -> bytes:
    """A minimal ICC v2 RGB matrix/TRC display profile with the given (D50) primaries (~500 bytes)."""
    def s15(v):
        return struct.pack(">i", round(v * 65536))

    def xyz(x, y, z):
        return b"XYZ \0\0\0\0" + s15(x) + s15(y) + s15(z)

    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", 5) + b"test\0" + b"\0" * 78
    tags = [(b"desc", desc), (b"wtpt", xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", xyz(*red)), (b"gXYZ", xyz(*green)),
            (b"bXYZ", xyz(*blue)), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
            (b"cprt", b"text\0\0\0\0none\0")]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (struct.pack(">I", offset + len(body)) + b"\0" * 4 + struct.pack(">I", 0x02100000)
              + b"mntrRGB XYZ " + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + b"\0" * 28
              + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + body


# Red and green primaries swapped: a pixel stored as (200, 40, 40) in this space is green in sRGB.
SWAPPED = (SRGB_GREEN, SRGB_RED, SRGB_BLUE)


@needs_pillow
@needs_cms
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
@pytest.mark.parametrize("source_format", ["JPEG", "PNG"])
def test_an_embedded_profile_is_converted_to_untagged_srgb(store, fmt, source_format):
    source = encoded(Image.new("RGB", (40, 40), (200, 40, 40)), source_format, icc_profile=icc_profile(*SWAPPED))
    out = make(store, "thumb_20", source, format=fmt)
    r, g, b = out.getpixel((10, 10))
    assert g > 150 and r < 80 and b < 80, (r, g, b)
    assert not out.info.get("icc_profile")


@needs_pillow
@needs_cms
def test_an_srgb_profile_leaves_the_colours_alone(store):
    source = encoded(Image.new("RGB", (40, 40), (200, 120, 40)), "PNG", icc_profile=icc_profile(SRGB_RED,
                     SRGB_GREEN, SRGB_BLUE))
    out = make(store, "thumb_20", source, format="png")
    assert close(out.getpixel((10, 10)), (200, 120, 40), 6)


@needs_pillow
@needs_cms
def test_gray_goes_through_the_profile_before_taking_luma(store):
    source = encoded(Image.new("RGB", (40, 40), (200, 40, 40)), "JPEG", quality=95,
                     icc_profile=icc_profile(*SWAPPED))
    untagged = encoded(Image.new("RGB", (40, 40), (200, 40, 40)), "JPEG", quality=95)
    assert make(store, "gray", source, format="png").getpixel((20, 20)) > 110  # green is bright
    assert make(store, "gray", untagged, format="png").getpixel((20, 20)) < 90   # red is dark


@needs_pillow
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_without_imagecms_an_rgb_profile_is_kept_byte_for_byte(store, monkeypatch, fmt):
    monkeypatch.setattr(imaging, "ImageCms", None)
    profile = icc_profile(*SWAPPED)
    source = encoded(Image.new("RGB", (40, 40), (200, 40, 40)), "PNG", icc_profile=profile)
    out = make(store, "thumb_20", source, format=fmt)
    assert out.info.get("icc_profile") == profile
    assert close(out.getpixel((10, 10)), (200, 40, 40))  # untouched: the profile says what they mean
    assert not make(store, "gray", source, format=fmt).info.get("icc_profile")


@needs_pillow
def test_an_unreadable_profile_is_ignored(store):
    junk = b"\0" * 16 + b"RGB " + b"\xff" * 200
    out = make(store, "thumb_20", encoded(Image.new("RGB", (40, 40), (200, 40, 40)), "PNG", icc_profile=junk))
    assert close(out.getpixel((10, 10)), (200, 40, 40))


@needs_pillow
@pytest.mark.parametrize("variant", ["thumb_40", "gray"])
def test_cmyk_converts_to_the_right_colours(store, variant):
    cmyk = quadrants(80, 80, colours=((255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 255)),
                     mode="CMYK")
    out = make(store, variant, encoded(cmyk, "JPEG", quality=95))
    expected = [(0, 255, 255), (255, 0, 255), (255, 255, 0), BLACK]  # cyan, magenta, yellow, black
    if variant == "gray":
        expected = [Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0)) for c in expected]
    assert out.mode == ("L" if variant == "gray" else "RGB")
    assert all(close(a, e, 16) for a, e in zip(quadrant_colours(out), expected)), quadrant_colours(out)


@needs_pillow
@pytest.mark.parametrize("cms", ["with ImageCms", "without ImageCms"])
def test_a_cmyk_profile_never_ends_up_on_an_rgb_output(store, monkeypatch, cms):
    if cms == "without ImageCms":
        monkeypatch.setattr(imaging, "ImageCms", None)
    elif imaging.ImageCms is None:
        pytest.skip("Pillow was built without ImageCms (littlecms)")
    unreadable = b"\0" * 16 + b"CMYK" + b"\0" * 200  # claims CMYK; littlecms cannot read it
    cmyk = Image.new("CMYK", (40, 40), (255, 0, 0, 0))
    out = make(store, "thumb_20", encoded(cmyk, "JPEG", quality=95, icc_profile=unreadable), format="png")
    assert out.mode == "RGB" and close(out.getpixel((10, 10)), (0, 255, 255), 16)
    assert not out.info.get("icc_profile")


def png16(width, height, samples, colour_type) -> bytes:
    """A 16-bit PNG (Pillow writes none in colour): ``samples`` row-major, tuples per pixel for RGB."""
    rows = []
    for y in range(height):
        row = samples[y * width:(y + 1) * width]
        rows.append(b"\0" + b"".join(struct.pack(f">{len(p)}H", *p) if isinstance(p, tuple)
                                     else struct.pack(">H", p) for p in row))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


LEVELS16 = (0, 16448, 32896, 65535)  # 0, 64, 128, 255 in 8 bits


@needs_pillow
@pytest.mark.parametrize("variant", ["gray", "thumb_32"])
def test_16_bit_gray_levels_are_scaled_not_clipped(store, variant):
    # Four bands, 16 px each; the thumbnail halves them, and each band's middle stays pure.
    source = png16(64, 4, [LEVELS16[x // 16] for _ in range(4) for x in range(64)], colour_type=0)
    out = make(store, variant, source, format="png")
    values = [out.getpixel((x, out.height // 2)) for x in range(out.width)]
    band = out.width // 4
    got = [values[i * band + band // 2] for i in range(4)]
    assert all(close(g, e, 2) for g, e in zip(got, (0, 64, 128, 255))), got


@needs_pillow
def test_16_bit_rgb_levels_are_scaled(store):
    pixels = [(LEVELS16[1], LEVELS16[2], LEVELS16[3])] * 16
    out = make(store, "thumb_4", png16(4, 4, pixels, colour_type=2), format="png")
    assert close(out.getpixel((2, 2)), (64, 128, 255), 2)


@needs_pillow
@pytest.mark.parametrize("mode", ["I;16", "I"])
@pytest.mark.parametrize("height", [1, 255, 256, 700])  # around the band's height
def test_16_bit_conversion_by_bands_gives_what_the_whole_image_conversion_gave(mode, height):
    rng = random.Random(height)
    im = Image.new(mode, (37, height))
    im.putdata([rng.randrange(65536) for _ in range(37 * height)])
    whole = im.convert("I").point(lambda v: v * (1 / 257) + 0.5).convert("L")  # the former conversion
    assert imaging._working_mode(im).tobytes() == whole.tobytes()


def keyed_gray_png(depth, samples, key, width) -> bytes:
    """A grayscale PNG of bit ``depth`` (1, 8 or 16) with a ``tRNS`` colour key: ``samples`` row-major."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = []
    for top in range(0, len(samples), width):
        row = samples[top:top + width]
        if depth == 1:
            bits = "".join(str(v) for v in row).ljust(-(-width // 8) * 8, "0")
            rows.append(b"\0" + int(bits, 2).to_bytes(len(bits) // 8, "big"))
        else:
            rows.append(b"\0" + struct.pack(f">{width}{'H' if depth == 16 else 'B'}", *row))
    header = struct.pack(">IIBBBBB", width, len(samples) // width, depth, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tRNS", struct.pack(">H", key))
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


# (bit depth, keyed sample, other sample, the other's 8-bit value): left half keyed, right half not.
# 0x1011 is one step from the 16-bit key and scales to the same 8 bits: the key is matched at 16 bits.
KEYED_SOURCES = {"8-bit": (8, 0x10, 0x80, 0x80), "16-bit": (16, 0x1010, 0x1011, 0x10),
                 "16-bit, key 0": (16, 0, 0x8080, 0x80), "1-bit, key black": (1, 0, 1, 255),
                 "1-bit, key white": (1, 1, 0, 0)}


@needs_pillow
@pytest.mark.parametrize("source", sorted(KEYED_SOURCES))
@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg"])
def test_a_trns_colour_key_makes_gray_pngs_of_every_depth_transparent(store, source, fmt):
    """Found by a review: the key of a 16-bit or 1-bit grayscale PNG was dropped (the keyed pixels came
    out opaque), while an 8-bit one's became alpha."""
    depth, keyed, other, other8 = KEYED_SOURCES[source]
    data = keyed_gray_png(depth, [keyed] * 8 + [other] * 8, keyed, width=16)
    out = make(store, "gray", data, format=fmt, **({"background": "#ff0000"} if fmt == "jpeg" else {}))
    assert out.size == (16, 1)
    if fmt == "jpeg":  # flattened over the background, then gray: red's luma where the key was
        assert close(out.getpixel((2, 0)), 76, 8) and close(out.getpixel((13, 0)), other8, 8)
        return
    rgba = out.convert("RGBA")
    assert rgba.getpixel((2, 0))[3] == 0, rgba.getpixel((2, 0))
    assert rgba.getpixel((13, 0))[3] == 255 and close(rgba.getpixel((13, 0))[:3], (other8,) * 3, 4)


@needs_pillow
@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_keyed_conversion_by_bands_keys_exactly_the_keyed_samples(mode):
    rng = random.Random(7)
    key = 30000
    samples = [rng.choice((key, key - 1, key + 1, rng.randrange(65536))) for _ in range(37 * 700)]
    im = Image.new(mode, (37, 700))
    im.putdata(samples)
    im.info["transparency"] = key
    out = imaging._working_mode(im)
    assert out.mode == "LA"
    unkeyed = Image.new(mode, im.size)
    unkeyed.putdata(samples)
    assert out.getchannel("L").tobytes() == imaging._working_mode(unkeyed).tobytes()
    assert out.getchannel("A").tobytes() == bytes(0 if v == key else 255 for v in samples)


def wide_gray_tiff(mode, samples, width=256) -> bytes:
    """A grayscale TIFF of Pillow ``mode`` F (32-bit float) or I (32-bit integer), ``samples`` row-major."""
    im = Image.new(mode, (width, len(samples) // width))
    im.putdata(samples)
    return encoded(im, "TIFF")


RAMP = [x / 255 for x in range(256)] * 4  # 0.0 .. 1.0 left to right, 4 rows


@needs_pillow
@pytest.mark.parametrize("mode, samples, shown", [
    ("I", [round(v * (2 ** 31 - 1)) for v in RAMP], "from 0 to 2147483647"),
    ("I", [round(v * 70000) - 5 for v in RAMP], "from -5 to 69995"),
    ("F", [v * 1000 for v in RAMP], "from 0 to 1000"),
    ("F", [v * 2 - 1 for v in RAMP], "from -1 to 1"),
])
def test_32_bit_samples_outside_the_ranges_read_are_refused_naming_mode_and_range(store, mode, samples, shown):
    """Found by a review: a full-range 32-bit integer TIFF came out white and a float one black or
    clipped, silently. There is no scale to read such samples by: refused, permanently."""
    store.write("img/wide.tif", [wide_gray_tiff(mode, samples)])
    with pytest.raises(UnsupportedSource, match=rf"object 'img/wide.tif' .*\(mode {mode}\) .*{shown}") as info:
        Processor(store).process(task("gray", "img/wide.tif", format="png"))
    assert isinstance(info.value, PermanentError)


@needs_pillow
@pytest.mark.parametrize("mode, samples", [
    ("F", RAMP),                                   # 0..1: the usual scale of float images, times 255
    ("F", [v * 255 for v in RAMP]),                # 0..255: as 8-bit values
    ("I", [round(v * 65535) for v in RAMP]),       # 0..65535: 16-bit data, divided by 257
])
def test_32_bit_samples_in_a_known_range_are_scaled_to_8_bits(store, mode, samples):
    out = make(store, "gray", wide_gray_tiff(mode, samples), key="img/ok.tif", format="png")
    assert (out.mode, out.size) == ("L", (256, 4))
    got = [out.getpixel((x, 2)) for x in (0, 64, 128, 192, 255)]
    assert all(close(g, e, 1) for g, e in zip(got, (0, 64, 128, 192, 255))), got


_PEAK_SCRIPT = """
import io, resource, sys
from PIL import Image
import taskqueue.imaging as imaging
im = Image.new("I;16", (4000, 4000), 30000)
im.load()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = imaging._working_mode(im)
unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * unit // (4000 * 4000), out.mode)
"""


@needs_pillow
@pytest.mark.skipif(resource is None, reason="no resource module here")
def test_16_bit_images_convert_within_a_few_bytes_a_pixel():
    """Found by a review: a 16-bit image became 8-bit through two full-size 32-bit copies, 10 bytes a
    pixel at the peak beside its 2 (a 100 MP scan at the default pixel limit: 1 GB in one worker).
    Measured in a child process (peak RSS), beyond the decoded image: the 8-bit result, 1 byte a
    pixel, and a band at a time."""
    child = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, timeout=120,
                           cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert child.returncode == 0, child.stderr
    extra_per_pixel, mode = child.stdout.split()
    assert mode == "L" and int(extra_per_pixel) <= 2, child.stdout


# -- metadata ---------------------------------------------------------------------------------------

@needs_pillow
@pytest.mark.parametrize("variant", ["thumb_32", "thumb_4096", "gray"])  # 4096: the source is not resized
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_exif_gps_comments_and_text_are_stripped(store, variant, fmt):
    secret = "SecretCam 3000"
    im = quadrants(64, 48)
    sources = {
        "img/a.jpg": encoded(im, "JPEG", exif=with_exif(1, secret, gps=True), comment=secret.encode()),
        "img/a.png": encoded(im, "PNG", exif=with_exif(1, secret, gps=True),
                             pnginfo=_png_text("Author", secret)),
        "img/a.webp": encoded(im, "WEBP", exif=with_exif(1, secret, gps=True), xmp=f"<x>{secret}</x>".encode()),
    }
    for key, data in sources.items():
        store.write(key, [data])
        out = Processor(store).process(task(variant, key, format=fmt))
        raw = b"".join(store.read_chunks(out.key))
        assert secret.encode() not in raw, key
        assert b"Exif\0\0" not in raw
        with Image.open(io.BytesIO(raw)) as result:
            result.load()
            assert len(result.getexif()) == 0
            assert not {"exif", "comment", "xmp", "Author", "XML:com.adobe.xmp"} & set(result.info)


def _png_text(key, value):
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo()
    info.add_text(key, value)
    return info


# -- limits ---------------------------------------------------------------------------------------------

def huge_png_header(width=40000, height=40000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height``: a few dozen bytes, 1.6 G pixels claimed."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def huge_jpeg_header(width=40000, height=40000) -> bytes:
    """A real 8x8 JPEG whose frame header (SOF0) is rewritten to claim ``width`` x ``height``."""
    data = bytearray(encoded(Image.new("RGB", (8, 8), RED), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.fixture
def forbid_decoding(monkeypatch):
    """Call it, and from then on any decoding of pixel data fails the test."""
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__}.load() was called: pixels were decoded")

    def forbid():
        monkeypatch.setattr(Image.Image, "load", refuse)
        monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    return forbid


@needs_pillow
@pytest.mark.parametrize("make_source", [huge_png_header, huge_jpeg_header], ids=["png", "jpeg"])
@pytest.mark.parametrize("variant", ["thumb_256", "gray"])
def test_a_huge_header_is_refused_before_any_decoding(store, forbid_decoding, make_source, variant):
    data = make_source()
    assert len(data) < 1024
    store.write("img/bomb", [data])
    forbid_decoding()
    with pytest.raises(ImageTooLarge, match=r"'img/bomb' is 40000x40000 \(1600000000 pixels\), over the limit "
                                            r"of 100000000 pixels") as info:
        Processor(store).process(task(variant, "img/bomb"))
    assert isinstance(info.value, PermanentError)
    assert not store.exists(Processor.output_key(task(variant, "img/bomb")))


def webp_header(chunk, width, height) -> bytes:
    """The first 30 bytes of a WebP declaring ``width`` x ``height`` in a ``chunk`` of that kind
    ('VP8 ', 'VP8L' or 'VP8X'), then junk: a file libwebp would be asked to decode, but not by us."""
    if chunk == b"VP8 ":  # frame tag (3 bytes, a key frame), start code, 14-bit width and height
        body = b"\x30\x04\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height)
    elif chunk == b"VP8L":  # signature, then width-1 and height-1 in 14 bits each, little-endian
        body = b"\x2f" + ((width - 1) | (height - 1) << 14).to_bytes(4, "little") + b"\0"
    else:  # flags, 3 reserved bytes, then canvas width-1 and height-1 in 24 bits each
        body = b"\x10\0\0\0" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    data = chunk + struct.pack("<I", 1000) + body + b"\0" * 64
    return b"RIFF" + struct.pack("<I", len(data) + 4) + b"WEBP" + data


@pytest.fixture
def forbid_webp_open(monkeypatch):
    """Call it, and from then on Pillow's WebP plugin may not even parse a file (libwebp allocates
    the whole canvas while it does)."""
    from PIL import WebPImagePlugin

    def refuse(self, *args, **kwargs):
        raise AssertionError("the WebP plugin's _open ran: libwebp was handed the file")

    return lambda: monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "_open", refuse)


@needs_pillow
@pytest.mark.parametrize("chunk", [b"VP8 ", b"VP8L", b"VP8X"], ids=["lossy", "lossless", "extended"])
def test_a_huge_webp_header_is_refused_before_libwebp_sees_it(store, forbid_webp_open, forbid_decoding, chunk):
    """Found by a review: libwebp allocates its canvas (and decodes at ~16 bytes a pixel) inside
    Image.open, before the pixel limit was checked on the size Pillow reported."""
    store.write("img/bomb.webp", [webp_header(chunk, 16383, 16383)])
    forbid_webp_open()
    forbid_decoding()
    with pytest.raises(ImageTooLarge, match=r"'img/bomb.webp' is 16383x16383 \(268402689 pixels\), over the "
                                            r"limit of 25000000 pixels for WebP") as info:
        Processor(store).process(task("thumb_64", "img/bomb.webp"))
    assert isinstance(info.value, PermanentError)


@needs_pillow
@pytest.mark.parametrize("source", ["lossy", "lossless", "alpha"])
def test_webp_counts_four_times_its_pixels_against_the_limit(store, forbid_webp_open, source):
    """A 100x60 WebP (6000 pixels) needs a limit of 24000: libwebp's ~16 bytes a pixel against the
    ~4 of the other decoders. Read from the header of a real WebP, before libwebp runs."""
    colour, kwargs = {"lossy": (RED, {}), "lossless": (RED, {"lossless": True}),
                      "alpha": ((255, 0, 0, 0), {})}[source]
    data = encoded(Image.new("RGBA" if len(colour) == 4 else "RGB", (100, 60), colour), "WEBP", **kwargs)
    store.write("img/a.webp", [data])
    out = Processor(store, max_image_pixels=24000).process(task("thumb_50", "img/a.webp", format="png"))
    with Image.open(io.BytesIO(b"".join(store.read_chunks(out.key)))) as im:
        assert im.size == (50, 30)
    forbid_webp_open()
    with pytest.raises(ImageTooLarge, match=r"'img/a.webp' is 100x60 \(6000 pixels\), over the limit of 5999 "
                                            r"pixels for WebP \(TQ_MAX_IMAGE_PIXELS / 4"):
        Processor(store, max_image_pixels=23999).process(task("thumb_50", "img/a.webp"))


@needs_pillow
def test_a_webp_header_without_a_readable_size_is_unsupported(store, forbid_webp_open):
    data = bytearray(webp_header(b"VP8 ", 64, 64))
    data[23:26] = b"\0\0\0"  # no VP8 start code: libwebp would refuse it too, later
    store.write("img/bad.webp", [bytes(data)])
    forbid_webp_open()
    with pytest.raises(UnsupportedSource, match="object 'img/bad.webp' is not a decodable image"):
        Processor(store).process(task("thumb_64", "img/bad.webp"))


@needs_pillow
@pytest.mark.parametrize("offset", [2 ** 63 - 5, 2 ** 63 + 5], ids=["einval", "eoverflow"])
def test_a_corrupt_offset_in_the_header_is_unsupported_naming_the_object(store, offset):
    """Found by a review: a BigTIFF whose first directory lies at 2**63-5 made the seek fail with
    EINVAL, which passed through as a bare OSError naming nothing (taken for a failing read)."""
    store.write("img/bad.tif", [b"II" + struct.pack("<HHHQ", 43, 8, 0, offset)])
    with pytest.raises(UnsupportedSource, match="object 'img/bad.tif' is not a decodable image"):
        Processor(store).process(task("thumb_64", "img/bad.tif"))


def tiled_tiff(tile: int, size: int = 8) -> bytes:
    """A ``size`` x ``size`` grayscale TIFF stored as one deflated ``tile`` x ``tile`` tile (mid-gray;
    a tile of over 4096 pixels holds only its first 4096: a few bytes that declare a huge one)."""
    data = zlib.compress(b"\x80" * min(tile * tile, 4096))
    entries = [(256, 3, size), (257, 3, size), (258, 3, 8), (259, 3, 8), (262, 3, 1), (277, 3, 1),
               (322, 4, tile), (323, 4, tile), (324, 4, None), (325, 4, len(data))]
    data_at = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\0" + struct.pack("<IH", 8, len(entries))
    for tag, kind, value in entries:
        value = data_at if value is None else value
        out += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else
                                                   struct.pack("<I", value))
    return out + b"\0\0\0\0" + data


@needs_pillow
def test_a_tiff_whose_tiles_are_over_the_limit_is_refused_before_any_decoding(store, forbid_decoding):
    """Found by a review: the limit was checked on the image's size only, and libtiff allocates a whole
    tile to decode into -- a 146-byte 8x8 TIFF declaring one 46336x46336 tile cost 2 GB per attempt."""
    store.write("img/tiled", [tiled_tiff(16)])
    assert Processor(store).process(task("gray", "img/tiled", format="png")).size > 0  # a real tiled TIFF
    assert Processor(store, max_image_pixels=256).process(task("thumb_8", "img/tiled")).size > 0
    with pytest.raises(ImageTooLarge, match=r"'img/tiled' declares 16x16 tiles \(256 pixels each\), over the "
                                            r"limit of 255 pixels"):
        Processor(store, max_image_pixels=255).process(task("thumb_8", "img/tiled"))  # the image: 64 pixels
    store.write("img/bomb", [tiled_tiff(46336)])
    forbid_decoding()
    with pytest.raises(ImageTooLarge, match=r"'img/bomb' declares 46336x46336 tiles"):
        Processor(store).process(task("gray", "img/bomb"))


@needs_pillow
def test_the_limit_is_the_processors_and_counts_width_times_height(store, make_image):
    store.write("img/src", [make_image(40, 25)])  # 1000 pixels
    assert Processor(store, max_image_pixels=1000).process(task("thumb_8")).size > 0
    with pytest.raises(ImageTooLarge, match="40x25 \\(1000 pixels\\), over the limit of 999 pixels"):
        Processor(store, max_image_pixels=999).process(task("thumb_8"))


@needs_pillow
def test_pillows_own_global_limit_is_left_alone(store):
    store.write("img/bomb", [huge_png_header()])
    with pytest.raises(ImageTooLarge):
        Processor(store, max_image_pixels=10).process(task("thumb_8", "img/bomb"))
    assert Image.MAX_IMAGE_PIXELS == 1024 * 1024 * 1024 // 4 // 3  # Pillow's default, untouched


@needs_pillow
def test_webp_refuses_more_than_16383_pixels_per_side(store):
    store.write("img/wide", [encoded(Image.new("L", (16384, 1), 128), "PNG")])
    with pytest.raises(ImageTooLarge, match="object 'img/wide': the output would be 16384x1; webp holds at most "
                                            "16383 pixels per side"):
        Processor(store).process(task("gray", "img/wide", format="webp"))
    assert Processor(store).process(task("gray", "img/wide", format="png")).size > 0


@needs_pillow
@pytest.mark.parametrize("fmt, kwargs", [("PPM", {}), ("ICO", {}), ("TGA", {})])
def test_formats_outside_the_accepted_list_are_unsupported(store, fmt, kwargs):
    store.write("img/other", [encoded(Image.new("RGB", (16, 16), RED), fmt, **kwargs)])
    with pytest.raises(UnsupportedSource, match="not an image in an accepted format"):
        Processor(store).process(task("thumb_8", "img/other"))


@needs_pillow
@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF", "WEBP"])
def test_accepted_formats_beyond_jpeg_and_png(store, fmt):
    out = make(store, "thumb_8", encoded(quadrants(16, 16), fmt))
    assert out.size == (8, 8)


# -- first frame -------------------------------------------------------------------------------------

@needs_pillow
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
@pytest.mark.parametrize("container", ["GIF", "TIFF", "WEBP", "PNG", "MPO"])  # PNG: an APNG
def test_animated_and_multi_page_sources_give_their_first_frame(store, fmt, container):
    frames = [Image.new("RGB", (40, 30), colour) for colour in (RED, GREEN, BLUE)]
    source = encoded(frames[0], container, save_all=True, append_images=frames[1:],
                     **({"duration": 100, "loop": 0} if container not in ("TIFF", "MPO") else {}))
    if container == "MPO":
        skip_unless_pillow_reads_its_own_mpo(source)
    with Image.open(io.BytesIO(source)) as check:
        assert getattr(check, "n_frames", 1) == 3
    out = make(store, "thumb_20", source, format=fmt)
    assert out.size == (20, 15)
    assert close(out.getpixel((10, 7)), RED, 16)
    assert getattr(out, "n_frames", 1) == 1


def skip_unless_pillow_reads_its_own_mpo(data: bytes) -> None:
    """Pillow 10 writes MPO files that it then cannot read ("broken data stream"); later versions can."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except OSError as exc:
        pytest.skip(f"this Pillow ({Image.__version__}) cannot read the MPO it writes: {exc}")


# -- memory: decode at reduced size --------------------------------------------------------------------

@pytest.fixture
def jpeg_decodes(monkeypatch):
    """(mode, size) of every JPEG decode, as the decoder was set up just before it ran."""
    from PIL import JpegImagePlugin
    decoded = []
    real = JpegImagePlugin.JpegImageFile.load

    def spy(self):
        decoded.append((self.mode, self.size))
        return real(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy)
    return decoded


@needs_pillow
def test_a_jpeg_thumbnail_is_decoded_at_reduced_scale(store, jpeg_decodes):
    make(store, "thumb_64", encoded(quadrants(1600, 1200), "JPEG"))
    assert jpeg_decodes[0] == ("RGB", (200, 150))  # 1/8 scale: still >= 2 x 64 on each side
    jpeg_decodes.clear()
    make(store, "gray", encoded(quadrants(160, 120), "JPEG"))
    assert jpeg_decodes[0] == ("L", (160, 120))  # luma only


@needs_pillow
def test_an_mpo_thumbnail_is_decoded_at_reduced_scale_too(store, jpeg_decodes):
    frames = [quadrants(1600, 1200), Image.new("RGB", (1600, 1200), BLUE)]
    mpo = encoded(frames[0], "MPO", save_all=True, append_images=frames[1:])
    skip_unless_pillow_reads_its_own_mpo(mpo)
    jpeg_decodes.clear()
    out = make(store, "thumb_64", mpo)
    assert jpeg_decodes[0] == ("RGB", (200, 150))  # a camera's MPO is a JPEG with extra images
    assert close(out.getpixel((8, 8)), RED, 16)


@needs_pillow
def test_other_formats_are_reduced_by_an_integer_factor_before_resampling(store, monkeypatch):
    factors = []
    real = Image.Image.reduce

    def spy(self, factor, box=None):
        factors.append(factor)
        return real(self, factor, box)

    monkeypatch.setattr(Image.Image, "reduce", spy)
    make(store, "thumb_64", encoded(quadrants(1600, 1200), "PNG"))
    assert factors and min(factors[0]) >= 8


@needs_pillow
@pytest.mark.parametrize("where", ["open", "load"])
def test_a_memory_shortage_while_decoding_stays_a_memory_error(store, monkeypatch, where):
    """Pillow's MemoryError (an allocation refused) is not a verdict on the file: it must reach
    retry.classify as itself, not as UnsupportedSource."""
    from PIL import PngImagePlugin

    def short(self, *args, **kwargs):
        raise MemoryError()

    store.write("img/ok.png", [encoded(quadrants(64, 48), "PNG")])
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "_open" if where == "open" else "load", short)
    with pytest.raises(MemoryError):
        Processor(store).process(task("thumb_32", "img/ok.png"))


@needs_pillow
def test_a_memory_shortage_is_retried_then_dead_lettered_after_the_last_attempt(tmp_path, store, monkeypatch):
    import sqlite3

    from PIL import PngImagePlugin

    from taskqueue.config import Config
    from taskqueue.engine import TaskQueue

    calls = []

    def short(self, *args, **kwargs):
        calls.append(1)
        raise MemoryError()

    store.write("img/ok.png", [encoded(quadrants(64, 48), "PNG")])
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", short)
    db = tmp_path / "tasks.db"
    config = Config(workers=1, max_attempts=3, retry_base_s=0.001, retry_cap_s=0.002, fsync_outputs=False)
    with TaskQueue(db, store, config=config) as tq:
        error = tq.submit(task("thumb_32", "img/ok.png")).exception(timeout=60)
    assert isinstance(error, MemoryError)
    assert len(calls) == 3
    with sqlite3.connect(db) as conn:
        letters = conn.execute("SELECT idempotency_key, attempts, error_class FROM dead_letters").fetchall()
    assert letters == [("img/ok.png:thumb_32", 3, "MemoryError")]


# -- bad files, end to end ------------------------------------------------------------------------------

@needs_pillow
def test_truncated_non_image_and_huge_files_are_dead_lettered_at_the_first_attempt(tmp_path, store):
    import sqlite3

    from taskqueue.config import Config
    from taskqueue.engine import TaskQueue

    good = encoded(quadrants(64, 48), "JPEG")
    png = encoded(quadrants(64, 48), "PNG")
    sources = {"img/ok.jpg": good, "img/cut.jpg": good[: len(good) // 2], "img/cut.png": png[: len(png) // 2],
               "img/text.jpg": b"this is not an image\n" * 20, "img/empty.png": b"",
               "img/bomb.png": huge_png_header()}
    for key, data in sources.items():
        store.write(key, [data])
    db = tmp_path / "tasks.db"
    config = Config(workers=2, max_attempts=3, retry_base_s=0.001, retry_cap_s=0.002, fsync_outputs=False)
    with TaskQueue(db, store, config=config) as tq:
        futures = {key: tq.submit(Task(id=f"t{i}", image_key=key, variant="thumb_32"))
                   for i, key in enumerate(sources)}
        errors = {key: f.exception(timeout=60) for key, f in futures.items()}
    assert errors.pop("img/ok.jpg") is None
    assert {key: type(e).__name__ for key, e in errors.items()} == {
        "img/cut.jpg": "UnsupportedSource", "img/cut.png": "UnsupportedSource",
        "img/text.jpg": "UnsupportedSource", "img/empty.png": "UnsupportedSource",
        "img/bomb.png": "ImageTooLarge"}
    with sqlite3.connect(db) as conn:
        letters = {key: (attempts, kind) for key, attempts, kind in
                   conn.execute("SELECT idempotency_key, attempts, error_class FROM dead_letters")}
        retried = conn.execute("SELECT COUNT(*) FROM tasks WHERE attempts > 1").fetchone()[0]
    assert letters == {f"{key}:thumb_32": (1, type(errors[key]).__name__) for key in errors}
    assert retried == 0
    assert tq.final_metrics["counters"]["retried"] == 0

