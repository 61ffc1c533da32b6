import io

import numpy as np
import pytest
from badinput import asymmetric, pattern, zero_bilevel_png
from PIL import Image

from pipeline.sources.decode import DecodeError, decode_file, normalise

MAX_PIXELS, MIN_SIDE = 40_000_000, 4


def decode(path, size=16, channels=1, max_pixels=MAX_PIXELS, min_side=MIN_SIDE):
    return decode_file(str(path), size, channels, max_pixels, min_side)


def saved(tmp_path, name, img, **kw):
    path = tmp_path / name
    img.save(path, **kw)
    return path


def reason_of(path, **kw):
    with pytest.raises(DecodeError) as e:
        decode(path, **kw)
    return e.value.reason


# ---- conventions ----------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_grey_is_scaled_by_its_full_range(tmp_path, channels):
    a = np.array([[0, 257, 32896, 65535]] * 4, np.uint16)
    path = saved(tmp_path, "g16.png", Image.fromarray(a))
    assert Image.open(path).mode.startswith("I")
    px = decode(path, size=4, channels=channels)
    assert px.shape == (4, 4, channels)
    assert px[0, :, 0].tolist() == [0, 1, 128, 255]


def test_32bit_int_and_float_tiffs_are_scaled(tmp_path):
    ints = np.array([[0, 32896, 65535, 65535]] * 4, np.int32)
    assert decode(saved(tmp_path, "i.tif", Image.fromarray(ints)), size=4)[0, :, 0].tolist() == [0, 128, 255, 255]
    floats = np.array([[0.0, 0.5, 1.0, 1.0]] * 4, np.float32)
    assert decode(saved(tmp_path, "f.tif", Image.fromarray(floats)), size=4)[0, :, 0].tolist() == [0, 128, 255, 255]


@pytest.mark.parametrize(
    "mode, value, alpha, expected",
    [
        ("RGBA", (200, 200, 200), 0, 0),
        ("RGBA", (200, 200, 200), 255, 200),
        ("RGBA", (200, 200, 200), 128, 100),
        ("LA", (200,), 128, 100),
    ],
)
def test_transparency_is_composited_on_black(tmp_path, mode, value, alpha, expected):
    path = saved(tmp_path, "t.png", Image.new(mode, (8, 8), (*value, alpha)))
    assert np.all(decode(path, size=8) == expected)


def test_palette_and_colour_key_transparency_are_composited_on_black(tmp_path):
    pal = Image.fromarray(np.array([[1, 2] * 4] * 8, np.uint8), "P")
    pal.putpalette([0, 0, 0, 200, 200, 200, 100, 100, 100])
    px = decode(saved(tmp_path, "p.png", pal, transparency=1), size=8)
    assert px[0, :2, 0].tolist() == [0, 100]
    colour = (10, 20, 30)
    key = saved(tmp_path, "k.png", Image.new("RGB", (8, 8), colour), transparency=colour)
    assert np.all(decode(key, size=8, channels=3) == 0)


def _stored_for(displayed: np.ndarray, orientation: int) -> np.ndarray:
    """What a camera stores so that EXIF `orientation` displays as `displayed` (EXIF 2.3)."""
    return {
        1: lambda d: d,
        2: np.fliplr,
        3: lambda d: np.rot90(d, 2),
        4: np.flipud,
        5: np.transpose,
        6: lambda d: np.rot90(d, 1),
        7: lambda d: np.rot90(d, 2).T,
        8: lambda d: np.rot90(d, -1),
    }[orientation](displayed)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = np.ascontiguousarray(_stored_for(asymmetric(), orientation))
    path = saved(tmp_path, "o.png", Image.fromarray(stored), exif=exif.tobytes())
    assert np.array_equal(decode(path)[..., 0], asymmetric())


def test_exif_orientation_in_a_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.ascontiguousarray(_stored_for(asymmetric(), 6))
    path = saved(tmp_path, "o.jpg", Image.fromarray(stored), exif=exif.tobytes(), quality=95)
    assert np.abs(decode(path)[..., 0].astype(int) - asymmetric()).max() <= 12


def test_cmyk_jpeg(tmp_path):
    path = saved(tmp_path, "c.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)), quality=95)
    assert np.abs(decode(path, size=8, channels=3).astype(int) - [255, 0, 0]).max() <= 3
    assert abs(int(decode(path, size=8)[0, 0, 0]) - 76) <= 3  # luma of red


@pytest.mark.parametrize("channels", [1, 3])
def test_lab_tiff_is_converted_for_both_channel_counts(tmp_path, channels):
    path = saved(tmp_path, "lab.tif", Image.new("LAB", (8, 8), (128, 128, 128)))
    px = decode(path, size=8, channels=channels)
    assert px.shape == (8, 8, channels) and np.all(np.abs(px.astype(int) - 119) <= 2)


def test_first_frame_of_an_animation(tmp_path):
    white = Image.new("L", (8, 8), 255)
    path = tmp_path / "a.gif"
    white.save(path, save_all=True, append_images=[Image.new("L", (8, 8), 0)])
    assert np.all(decode(path, size=8) == 255)


def test_resize_is_bilinear_to_a_square_without_cropping(tmp_path):
    wide = np.zeros((8, 32), np.uint8)
    wide[:, 16:] = 255
    px = decode(saved(tmp_path, "w.png", Image.fromarray(wide)), size=8)[..., 0]
    assert px.shape == (8, 8) and px[:, 0].max() == 0 and px[:, -1].min() == 255


def test_large_jpeg_is_drafted_and_resized(tmp_path):
    big = np.kron(pattern(3), np.ones((32, 32), np.uint8))  # 512x512, 4x4 blocks
    path = saved(tmp_path, "big.jpg", Image.fromarray(big), quality=95)
    px = decode(path, size=16)[..., 0].astype(int)
    inner = np.ix_([1, 2, 5, 6, 9, 10, 13, 14], [1, 2, 5, 6, 9, 10, 13, 14])  # off block edges
    assert np.abs(px - pattern(3))[inner].max() <= 6


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "WEBP", "PNG"])
def test_lossless_formats_round_trip(tmp_path, fmt):
    kw = {"lossless": True} if fmt == "WEBP" else {}
    path = saved(tmp_path, f"x.{fmt.lower()}", Image.fromarray(pattern(1)), format=fmt, **kw)
    assert np.array_equal(decode(path)[..., 0], pattern(1))


# ---- quarantine reasons -----------------------------------------------------------------


def _jpeg(size=16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size), np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_empty_and_non_image_files(tmp_path):
    (tmp_path / "e.png").write_bytes(b"")
    (tmp_path / "t.png").write_text("hello")
    assert reason_of(tmp_path / "e.png") == "empty_file"
    assert reason_of(tmp_path / "t.png") == "not_an_image"


@pytest.mark.parametrize("cut", [0.5, 0.85])
def test_truncated_jpeg_in_scan_data_or_header(tmp_path, cut):
    data = _jpeg()
    (tmp_path / "t.jpg").write_bytes(data[: int(len(data) * cut)])
    assert reason_of(tmp_path / "t.jpg") == "truncated"


def test_truncated_and_corrupt_png(tmp_path):
    data = saved(tmp_path, "ok.png", Image.fromarray(pattern(2))).read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    assert reason_of(tmp_path / "t.png") == "truncated"
    flipped = bytearray(data)
    flipped[data.index(b"IDAT") + 10] ^= 0xFF
    (tmp_path / "c.png").write_bytes(bytes(flipped))
    assert reason_of(tmp_path / "c.png") == "corrupt"


def test_size_guards(tmp_path):
    (tmp_path / "bomb.png").write_bytes(zero_bilevel_png(20000, 20000))
    assert reason_of(tmp_path / "bomb.png") == "too_large"  # past Pillow's own limit
    small_bomb = saved(tmp_path, "b.png", Image.new("L", (64, 64)))
    assert reason_of(small_bomb, max_pixels=64 * 64 - 1) == "too_large"
    assert decode(small_bomb, max_pixels=64 * 64).shape == (16, 16, 1)
    one = saved(tmp_path, "one.png", Image.new("L", (1, 1)))
    assert reason_of(one) == "too_small"
    assert reason_of(saved(tmp_path, "thin.png", Image.new("L", (64, 3)))) == "too_small"
    assert decode(one, min_side=1).shape == (16, 16, 1)


def test_decode_error_message_is_one_line_without_the_file_path(tmp_path):
    (tmp_path / "t.png").write_text("hello")
    with pytest.raises(DecodeError) as e:
        decode(tmp_path / "t.png")
    assert "\n" not in str(e.value) and str(tmp_path) not in str(e.value)


# ---- in-memory pixels -------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1)])
def test_normalise_passes_native_grey_through(shape):
    arr = np.arange(64, dtype=np.uint8).reshape(shape)
    out = normalise(arr, 8, 1)
    assert out.shape == (8, 8, 1) and np.array_equal(out.ravel(), arr.ravel())


def test_normalise_converts_and_resizes():
    grey = np.full((8, 8), 77, np.uint8)
    assert np.all(normalise(grey, 8, 3) == 77) and normalise(grey, 8, 3).shape == (8, 8, 3)
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[..., 0] = 255
    assert normalise(rgb, 4, 1).shape == (4, 4, 1)
    assert abs(int(normalise(rgb, 4, 1)[0, 0, 0]) - 76) <= 1
