"""Every shipped policy loads, applies to 1- and 3-channel images, saves back byte for byte,
and gives identical pixels for the same seed; bad files fail naming the key."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.augment import ops
from pipeline.augment import policy as pol
from pipeline.core.errors import PipelineError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "augment_policies").glob("*.yaml"))
IDS = [p.stem for p in SHIPPED]


def _img(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _augment(policy, img, seed, pool):
    drawn = pol.draw(policy, np.random.default_rng(seed), img.shape, pool_size=len(pool))
    return pol.apply(img, drawn, pool=pool, policy=policy)


def test_the_published_and_default_policies_are_shipped():
    assert {
        "autoaugment-cifar10",
        "autoaugment-svhn",
        "autoaugment-imagenet",
        "randaugment",
        "trivialaugment",
        "light",
        "strong",
    } <= set(IDS)
    for name in ("cifar10", "svhn", "imagenet"):
        p = pol.load(ROOT / f"augment_policies/autoaugment-{name}.yaml")
        assert len(p.sub_policies) == 25 and all(len(sub) == 2 for sub in p.sub_policies)
    cifar = pol.load(ROOT / "augment_policies/autoaugment-cifar10.yaml")
    assert cifar.sub_policies[0] == [("Invert", 0.1, None), ("Contrast", 0.2, 6)]
    ra = pol.load(ROOT / "augment_policies/randaugment.yaml")
    assert (ra.num_ops, ra.magnitude, len(ra.ops)) == (2, 9, 14)


@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_policy_round_trips_to_identical_yaml(path, tmp_path):
    p = pol.load(path)
    assert pol.dump(p) == path.read_text()
    pol.save(p, tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_bytes() == path.read_bytes()
    if p.kind == "pipeline":  # and it is albumentations' own serialised form
        import albumentations as A

        assert json.loads(json.dumps(A.to_dict(A.from_dict(p.transform)))) == p.transform


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_policy_applies_and_same_seed_gives_identical_pixels(path, channels):
    p = pol.load(path)
    shape = (28, 28, channels)
    pool = np.stack([_img(shape, s) for s in range(1, 4)])
    img = _img(shape)
    outs = [_augment(p, img, seed, pool) for seed in range(12)]
    assert all(o.shape == shape and o.dtype == np.uint8 for o in outs)
    assert any(not np.array_equal(o, img) for o in outs)
    assert len({o.tobytes() for o in outs}) > 1  # different seeds, different images
    again = [_augment(pol.load(path), img, seed, pool) for seed in range(12)]
    assert all(np.array_equal(a, b) for a, b in zip(outs, again))


def test_draw_follows_each_kind():
    rng = np.random.default_rng(0)
    ra = pol.parse({"version": 1, "kind": "randaugment", "num_ops": 3, "magnitude": 7, "ops": ["Rotate", "Invert"]})
    for _ in range(10):
        drawn = pol.draw(ra, rng, (8, 8, 1))
        assert len(drawn) == 3 and all(d.magnitude == (7 if d.op == "Rotate" else None) for d in drawn)
    ta = pol.parse({"version": 1, "kind": "trivialaugment", "magnitude_bins": 3, "ops": ["Rotate"], "space": "wide"})
    assert {pol.draw(ta, rng, (8, 8, 1))[0].magnitude for _ in range(40)} == {0.0, 5.0, 10.0}
    aa = pol.parse({"version": 1, "kind": "autoaugment", "sub_policies": [[["Invert", 1.0, None], ["Rotate", 0.0, 3]]]})
    assert all([d.op for d in pol.draw(aa, rng, (8, 8, 1))] == ["Invert"] for _ in range(10))


def test_apply_draws_nothing():
    p = pol.load(ROOT / "augment_policies/trivialaugment.yaml")
    img = _img((16, 16, 3))
    drawn = pol.draw(p, np.random.default_rng(5), img.shape)
    trace = []
    first = pol.apply(img, drawn, trace=trace)
    assert np.array_equal(first, pol.apply(img, drawn)) and trace == drawn
    assert '"op":' in pol.record(trace)


def test_pipeline_trace_names_the_albumentations_transforms_applied():
    p = pol.load(ROOT / "augment_policies/strong.yaml")
    trace = []
    pol.apply(_img((28, 28, 1)), pol.draw(p, np.random.default_rng(1), (28, 28, 1)), policy=p, trace=trace)
    assert trace and all(
        d.op
        in {
            "Affine",
            "ElasticTransform",
            "RandomBrightnessContrast",
            "GaussNoise",
            "GaussianBlur",
            "CoarseDropout",
            "OneOf",
        }
        for d in trace
    )


def _raw(**changes):
    raw = {"version": 1, "kind": "randaugment", "num_ops": 2, "magnitude": 9, "ops": ["Rotate"]}
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not None}


@pytest.mark.parametrize(
    "raw, match",
    [
        (_raw(version=2), r"version: expected 1, got 2"),
        (_raw(kind="fancyaugment"), r"kind: expected one of autoaugment, randaugment, trivialaugment, pipeline"),
        (_raw(ops=["Rotate", "Twirl"]), r"ops\.1: .*must be one of Identity"),
        (_raw(magnitude=11), r"magnitude: expected less than or equal to 10"),
        (_raw(num_ops=0), r"num_ops: expected greater than or equal to 1"),
        (_raw(magnitde=3), r"magnitde: unknown key"),
        (_raw(space="huge"), r"space: expected 'standard' or 'wide'"),
        (
            {"version": 1, "kind": "autoaugment", "sub_policies": [[["Invert", 0.5, 4]]]},
            r"expected null \(it has no magnitude\) for Invert",
        ),
        (
            {"version": 1, "kind": "autoaugment", "sub_policies": [[["Rotate", 1.5, 4]]]},
            r"sub_policies\.0\.0\.1: expected less than or equal to 1",
        ),
        (
            {"version": 1, "kind": "pipeline", "transform": {"transform": {"__class_fullname__": "Nope"}}},
            r"transform: expected an albumentations pipeline",
        ),
    ],
)
def test_bad_policies_fail_naming_the_key(raw, match):
    with pytest.raises(PipelineError, match=match) as e:
        pol.parse(raw, "x.yaml")
    assert "\n" not in str(e.value)


def test_load_path_names_the_missing_file_and_lists_its_neighbours(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(_raw()))
    assert pol.load_path(tmp_path / "a.yaml")[0] == "a"
    with pytest.raises(PipelineError, match=r"b.yaml: no such policy file \(found: .*a.yaml\)"):
        pol.load_path(tmp_path / "b.yaml")


def test_every_op_can_be_used_in_a_policy():
    p = pol.parse({"version": 1, "kind": "randaugment", "num_ops": 1, "magnitude": 10, "ops": list(ops.OPS)})
    img, pool = _img((12, 12, 3)), np.stack([_img((12, 12, 3), 1)])
    seen = {pol.draw(p, np.random.default_rng(s), img.shape, pool_size=1)[0].op for s in range(300)}
    assert seen == set(ops.OPS)
    for s in range(40):
        assert _augment(p, img, s, pool).shape == img.shape


def test_num_ops_and_magnitude_override_a_randaugment_policy():
    name, p = pol.load_path(ROOT / "augment_policies/randaugment.yaml", num_ops=3, magnitude=4)
    assert (name, p.num_ops, p.magnitude) == ("randaugment", 3, 4)
    assert p.ops == pol.load(ROOT / "augment_policies/randaugment.yaml").ops
    drawn = pol.draw(p, np.random.default_rng(0), (8, 8, 1))
    assert len(drawn) == 3 and all(d.magnitude in (4, None) for d in drawn)
    unchanged = pol.load_path(ROOT / "augment_policies/randaugment.yaml", num_ops=None, magnitude=None)[1]
    assert unchanged == pol.load(ROOT / "augment_policies/randaugment.yaml")


@pytest.mark.parametrize(
    "name, key",
    [
        ("trivialaugment.yaml", "magnitude"),
        ("trivialaugment.yaml", "num_ops"),
        ("autoaugment-svhn.yaml", "num_ops"),
        ("light.yaml", "magnitude"),
    ],
)
def test_overriding_a_field_the_kind_lacks_fails_naming_the_param(name, key):
    with pytest.raises(
        PipelineError,
        match=rf"augment\.{key}: expected null for {name} \(kind \w+ has no {key}; "
        rf"only randaugment has\), got 3",
    ):
        pol.load_path(ROOT / "augment_policies" / name, **{key: 3})
