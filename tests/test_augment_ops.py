"""Each op against its defined meaning: the papers' PIL code where they define it that way, and
the property that defines it (Posterize keeps the top bits, Solarize inverts from the threshold
up, ...). Driven by the op registry: an op without a case here fails."""

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from pipeline.augment import ops


def _img(channels: int, seed: int = 0, shape=(24, 20)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (*shape, channels), dtype=np.uint8)
    img[:4] = img[:4] // 3 + 40  # a darker band so histograms are not flat
    return img


def _pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def _np(pil: Image.Image, like: np.ndarray) -> np.ndarray:
    return np.asarray(pil).reshape(like.shape)


def _close(a: np.ndarray, b: np.ndarray, tol: int = 1) -> None:
    assert a.shape == b.shape and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b).max() <= tol


def case_identity(img):
    assert np.array_equal(ops.identity(img), img)


def _pil_affine(img, data):
    """The AutoAugment code's geometric op: PIL's affine map from output to input pixels."""
    return _np(_pil(img).transform(_pil(img).size, Image.AFFINE, data), img)


def case_shear_x(img):
    for s in (0.3, -0.17):
        assert np.array_equal(ops.shear_x(img, s, 0), _pil_affine(img, (1, s, 0, 0, 1, 0)))
    assert np.array_equal(ops.shear_x(img, 0.3)[0], img[0])  # shear about the top-left corner


def case_shear_y(img):
    for s in (0.3, -0.17):
        assert np.array_equal(ops.shear_y(img, s, 0), _pil_affine(img, (1, 0, 0, s, 1, 0)))
    assert np.array_equal(ops.shear_y(img, 0.3)[:, 0], img[:, 0])


def case_translate_x(img):
    w = img.shape[1]
    out = ops.translate_x(img, 0.25, fill=7)  # 5 px to the left
    assert np.array_equal(out[:, : w - 5], img[:, 5:]) and (out[:, w - 5 :] == 7).all()
    out = ops.translate_x(img, -0.25, fill=0)
    assert np.array_equal(out[:, 5:], img[:, : w - 5]) and (out[:, :5] == 0).all()


def case_translate_y(img):
    h = img.shape[0]
    out = ops.translate_y(img, 0.25, fill=7)  # 6 px up
    assert np.array_equal(out[: h - 6], img[6:]) and (out[h - 6 :] == 7).all()


def case_rotate(img):
    square = img[:20, :20]
    assert np.array_equal(ops.rotate(square, 90), np.rot90(square))  # counter-clockwise
    assert np.array_equal(ops.rotate(img, 20, 0), _np(_pil(img).rotate(20), img))


def case_auto_contrast(img):
    out = ops.auto_contrast(img)
    assert np.array_equal(out, _np(ImageOps.autocontrast(_pil(img)), img))
    # darkest to 0, brightest to 255 (254 where PIL's truncation meets a rounding error)
    assert (out.min(axis=(0, 1)) == 0).all() and (out.max(axis=(0, 1)) >= 254).all()


def case_invert(img):
    assert np.array_equal(ops.invert(img), 255 - img)


def case_equalize(img):
    out = ops.equalize(img)
    assert np.array_equal(out, _np(ImageOps.equalize(_pil(img)), img))
    flat = np.full_like(img, 9)
    assert np.array_equal(ops.equalize(flat), flat)


def case_solarize(img):
    out = ops.solarize(img, 128)
    assert np.array_equal(out, np.where(img >= 128, 255 - img, img))
    assert np.array_equal(ops.solarize(img, 256), img) and np.array_equal(ops.solarize(img, 0), 255 - img)


def case_posterize(img):
    for bits in (1, 4, 7):
        assert np.array_equal(ops.posterize(img, bits), img & np.uint8((0xFF << (8 - bits)) & 0xFF))
    assert np.array_equal(ops.posterize(img, 8), img)


def case_contrast(img):
    for f in (0.1, 0.6, 1.9):
        _close(ops.contrast(img, f), _np(ImageEnhance.Contrast(_pil(img)).enhance(f), img))
    assert np.array_equal(ops.contrast(img, 1.0), img)


def case_color(img):
    grey = img.astype(float) @ np.array([0.299, 0.587, 0.114])[: img.shape[-1]] if img.shape[-1] == 3 else None
    for f in (0.1, 0.6, 1.9):
        out = ops.color(img, f)
        if grey is not None:  # blend with the greyscale image; PIL truncates where we round
            _close(out, np.clip(grey[..., None] + f * (img - grey[..., None]), 0, 255))
        _close(out, _np(ImageEnhance.Color(_pil(img)).enhance(f), img), tol=2)
    if img.shape[-1] == 3:
        grey = ops.color(img, 0.0)
        assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    else:
        assert np.array_equal(ops.color(img, 0.3), img)  # a grey image has no colour to change


def case_brightness(img):
    for f in (0.1, 0.6, 1.9):
        _close(ops.brightness(img, f), np.clip(np.round(img * f), 0, 255))
        _close(ops.brightness(img, f), _np(ImageEnhance.Brightness(_pil(img)).enhance(f), img))


def case_sharpness(img):
    for f in (0.1, 0.6, 1.9):
        out = ops.sharpness(img, f)
        _close(out, _np(ImageEnhance.Sharpness(_pil(img)).enhance(f), img))
        assert np.array_equal(out[0], img[0]) and np.array_equal(out[:, -1], img[:, -1])


def case_cutout(img):
    out = ops.cutout(img, 0.25, cy=10, cx=10, fill=3)  # 6 x 5 box
    mask = np.zeros(img.shape[:2], bool)
    mask[7:13, 8:13] = True
    assert (out[mask] == 3).all() and np.array_equal(out[~mask], img[~mask])
    corner = ops.cutout(img, 0.25, cy=0, cx=0, fill=3)  # clipped at the border
    assert (corner[:3, :3] == 3).all() and np.array_equal(corner[3:], img[3:])
    assert np.array_equal(ops.cutout(img, 0.0, 5, 5), img)


def case_sample_pairing(img):
    other = _img(img.shape[-1], seed=1)
    _close(ops.sample_pairing(img, 0.4, other), np.round(0.6 * img + 0.4 * other))
    assert np.array_equal(ops.sample_pairing(img, 0.0, other), img)
    with pytest.raises(ValueError, match="partner shape"):
        ops.sample_pairing(img, 0.4, other[:5])


CASES = {
    "Identity": case_identity,
    "ShearX": case_shear_x,
    "ShearY": case_shear_y,
    "TranslateX": case_translate_x,
    "TranslateY": case_translate_y,
    "Rotate": case_rotate,
    "AutoContrast": case_auto_contrast,
    "Invert": case_invert,
    "Equalize": case_equalize,
    "Solarize": case_solarize,
    "Posterize": case_posterize,
    "Contrast": case_contrast,
    "Color": case_color,
    "Brightness": case_brightness,
    "Sharpness": case_sharpness,
    "Cutout": case_cutout,
    "SamplePairing": case_sample_pairing,
}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("op", ops.OPS)
def test_op_has_its_defined_meaning(op, channels):
    assert op in CASES, f"op {op} has no test case in CASES"
    CASES[op](_img(channels))


@pytest.mark.parametrize("space", sorted(ops.SPACES))
@pytest.mark.parametrize("op", ops.OPS)
def test_magnitude_zero_is_the_identity_for_ops_with_a_magnitude(op, space):
    img = _img(3)
    if not ops.has_magnitude(op, space):
        return
    rng = np.random.default_rng(0)
    for _ in range(4):
        params = ops.draw(op, 0, rng, img.shape, space, fill=0, pool_size=3)
        assert np.array_equal(ops.apply(img, op, params, pool=np.stack([_img(3, 1)] * 3)), img)


def test_the_papers_ranges_at_full_magnitude():
    std, wide = ops.SPACES["standard"], ops.SPACES["wide"]
    assert std["ShearX"].value(10) == 0.3 and std["Rotate"].value(10) == 30.0
    assert std["Rotate"].value(10, sign=-1) == -30.0 and std["Rotate"].value(5) == 15.0
    assert std["TranslateY"].value(10) == round(150 / 331, 6)
    assert std["Solarize"].value(10) == 0 and std["Solarize"].value(0) == 256
    assert std["Posterize"].value(10) == 4 and std["Posterize"].value(0) == 8
    assert std["Contrast"].value(10) == 1.9 and std["Contrast"].value(10, sign=-1) == 0.1
    assert std["Cutout"].value(10) == 0.2 and std["SamplePairing"].value(10) == 0.4
    assert wide["Rotate"].value(10) == 135.0 and wide["Posterize"].value(10) == 2
    assert wide["Brightness"].value(10, sign=-1) == 0.01


def test_signed_ops_draw_both_signs_and_unsigned_ops_do_not():
    rng = np.random.default_rng(0)
    shears = {np.sign(ops.draw("ShearX", 10, rng, (8, 8, 1))["shear"]) for _ in range(20)}
    assert shears == {-1.0, 1.0}
    assert {ops.draw("Solarize", 5, rng, (8, 8, 1))["threshold"] for _ in range(5)} == {128}


def test_draw_holds_all_the_randomness():
    img = _img(1)
    params = ops.draw("Cutout", 7, np.random.default_rng(3), img.shape)
    assert np.array_equal(ops.apply(img, "Cutout", params), ops.apply(img, "Cutout", params))
    assert set(params) == {"size", "cy", "cx", "fill"}


def test_unknown_op_and_missing_pool_fail_with_the_valid_names():
    with pytest.raises(ValueError, match="must be one of Identity, ShearX"):
        ops.draw("Shear", 5, np.random.default_rng(0), (8, 8, 1))
    with pytest.raises(ValueError, match="pool"):
        ops.draw("SamplePairing", 5, np.random.default_rng(0), (8, 8, 1))
