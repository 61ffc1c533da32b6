"""Online mixing: None when off; mixup / CutMix soft targets sum to 1 and CutMix's lambda is
the pasted area; random erasing leaves targets alone; the online policy is per sample and epoch."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.augment import mixing
from pipeline.augment import policy as pol
from pipeline.learn import losses

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**kw):
    base = dict(mixup_alpha=0.0, cutmix_alpha=0.0, mix_prob=1.0, switch_prob=0.5, random_erasing=0.0)
    return SimpleNamespace(**{**base, **kw})


def _batch(n=6, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 3, 12, 10), generator=g)
    y = losses.one_hot(torch.arange(n) % classes, classes)
    return x, y


def test_none_when_everything_is_off():
    assert mixing.make_batch_transform(_cfg()) is None
    assert mixing.make_batch_transform(SimpleNamespace(epochs=3)) is None  # a Train without the knobs
    assert mixing.make_batch_transform(_cfg(mixup_alpha=0.2, mix_prob=0.0)) is None


def test_mixup_mixes_pixels_and_targets_by_the_same_lambda():
    t = mixing.make_batch_transform(_cfg(mixup_alpha=0.4), seed=1)
    x, y = _batch()
    xm, ym = t(x, y)
    lam = t.last["lam"]
    assert t.last["mode"] == "mixup" and 0.0 <= lam <= 1.0
    assert torch.allclose(xm, lam * x + (1 - lam) * x.roll(1, 0))
    assert torch.allclose(ym.sum(1), torch.ones(len(y)))
    assert torch.allclose(ym, lam * y + (1 - lam) * y.roll(1, 0))


def test_cutmix_lambda_is_the_area_kept():
    t = mixing.make_batch_transform(_cfg(cutmix_alpha=1.0), seed=2)
    x, y = _batch()
    for _ in range(20):
        xm, ym = t(x, y, torch.Generator().manual_seed(_))
        y0, y1, x0, x1 = t.last["box"]
        pasted = torch.zeros(12, 10, dtype=torch.bool)
        pasted[y0:y1, x0:x1] = True
        assert t.last["lam"] == pytest.approx(1 - pasted.float().mean().item())
        assert torch.equal(xm[..., pasted], x.roll(1, 0)[..., pasted])
        assert torch.equal(xm[..., ~pasted], x[..., ~pasted])
        assert torch.allclose(ym.sum(1), torch.ones(len(y)))
        assert torch.allclose(ym, t.last["lam"] * y + (1 - t.last["lam"]) * y.roll(1, 0))


@pytest.mark.parametrize("switch_prob, mode", [(1.0, "cutmix"), (0.0, "mixup")])
def test_switch_prob_chooses_between_them(switch_prob, mode):
    t = mixing.make_batch_transform(_cfg(mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=switch_prob))
    for s in range(5):
        t(*_batch(), torch.Generator().manual_seed(s))
        assert t.last["mode"] == mode


def test_mix_prob_leaves_some_batches_alone():
    t = mixing.make_batch_transform(_cfg(mixup_alpha=0.2, mix_prob=0.5))
    modes = []
    for s in range(40):
        t(*_batch(), torch.Generator().manual_seed(s))
        modes.append(t.last["mode"])
    assert {"mixup", "none"} == set(modes)


def test_random_erasing_changes_pixels_not_targets():
    t = mixing.make_batch_transform(_cfg(random_erasing=1.0))
    x, y = _batch()
    xe, ye = t(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(ye, y) and t.last["mode"] == "none"
    changed = (xe != x).flatten(1).any(1)
    assert changed.all() and (xe != x).float().mean() < 0.4
    assert torch.equal(x, _batch()[0])  # the input batch is not modified in place


def test_same_generator_seed_same_batch():
    t = mixing.make_batch_transform(_cfg(mixup_alpha=0.2, cutmix_alpha=1.0, random_erasing=0.5))
    a = t(*_batch(), torch.Generator().manual_seed(7))
    b = t(*_batch(), torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_probability_fails_with_expected_got():
    with pytest.raises(ValueError, match="mix_prob: expected a probability in \\[0, 1\\], got 1.5"):
        mixing.MixBatch(mixup_alpha=0.2, mix_prob=1.5)


def test_soft_cross_entropy_matches_torch_on_hard_and_smoothed_targets():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 1, 2, 0])
    assert torch.allclose(
        losses.soft_cross_entropy(logits, losses.one_hot(y, 4)), F.cross_entropy(logits, y, reduction="none")
    )
    assert torch.allclose(
        losses.soft_cross_entropy(logits, losses.one_hot(y, 4, 0.1)),
        F.cross_entropy(logits, y, reduction="none", label_smoothing=0.1),
    )


def test_online_policy_is_per_sample_and_epoch():
    assert mixing.make_online_policy(None, 0) is None
    p = pol.load(ROOT / "augment_policies/randaugment.yaml")
    t = mixing.make_online_policy(p, seed=0)
    x = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 1), dtype=np.uint8)
    ids = [f"s{i}" for i in range(6)]
    a, b = t(x, ids, epoch=0), t(x, ids, epoch=0)
    assert a.shape == x.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, t(x, ids, epoch=1))
    assert np.array_equal(t(x[::-1], ids[::-1], epoch=0), a[::-1])  # batch order does not matter
    with pytest.raises(ValueError, match="one sample id per image"):
        t(x, ids[:2], 0)
