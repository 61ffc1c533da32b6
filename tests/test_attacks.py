import pytest
import torch
import torch.nn as nn

from pipeline.core.errors import PipelineError
from pipeline.learn import attacks
from pipeline.learn.attacks import AttackConfig


def _linear(n_in=16, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, 3)).eval()


def _data(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 4, 4), generator=g) * 0.6 + 0.2, torch.randint(0, 3, (n,), generator=g)


def test_fgsm_on_a_linear_model_moves_each_pixel_by_eps_sign_w():
    # Two classes, logits z = [0, w.x]: the gradient of the loss for label 0 is
    # p1 * w, so FGSM moves every pixel by eps * sign(w) (before clipping).
    w = torch.randn(16)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(16), w]))
    x, _ = _data()
    y = torch.zeros(len(x), dtype=torch.long)
    adv = attacks.get("fgsm").perturb(model, x, y, AttackConfig(eps=0.1))
    assert torch.allclose(adv - x, 0.1 * w.sign().view(1, 1, 4, 4).expand_as(x), atol=1e-6)


@pytest.mark.parametrize("name", sorted(attacks.ATTACKS))
def test_every_attack_stays_in_its_ball_and_the_pixel_range(name):
    model = _linear()
    x, y = _data()
    x[0] = 0.0  # at the edge of the range: clipping must hold
    cfg = AttackConfig(eps=0.3, steps=5)
    adv = attacks.attack_batches(model, x, y, name, cfg, seed=0, batch_size=3)
    assert adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x).flatten(1)
    if attacks.get(name).norm == "linf":
        assert delta.abs().max() <= 0.3 + 1e-6
    else:
        assert delta.norm(dim=1).max() <= 0.3 + 1e-5
    with torch.no_grad():  # the attack raises the loss
        before = nn.functional.cross_entropy(model(x), y)
        after = nn.functional.cross_entropy(model(adv), y)
    assert after > before


def test_targeted_attack_lowers_the_loss_of_the_target():
    model = _linear()
    x, _ = _data()
    target = torch.full((len(x),), 2)
    adv = attacks.get("pgd").perturb(model, x, target, AttackConfig(eps=0.3, targeted=True))
    with torch.no_grad():
        assert nn.functional.cross_entropy(model(adv), target) < nn.functional.cross_entropy(model(x), target)


def test_random_start_is_deterministic_in_the_seed():
    model, (x, y) = _linear(), _data()
    cfg = AttackConfig(eps=0.1, steps=2)
    a = attacks.attack_batches(model, x, y, "pgd", cfg, seed=5)
    b = attacks.attack_batches(model, x, y, "pgd", cfg, seed=5)
    c = attacks.attack_batches(model, x, y, "pgd", cfg, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_attack_lists_valid_names():
    with pytest.raises(PipelineError, match=r"unknown attack 'cw'; must be one of fgsm, pgd, pgd_l2$"):
        attacks.get("cw")


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()


@pytest.mark.parametrize(
    "ours, theirs, eps, alpha",
    [
        ("fgsm", "FGSM", 0.1, None),
        ("pgd", "PGD", 0.1, 0.02),
        ("pgd_l2", "PGDL2", 0.5, 0.1),
    ],
)
def test_matches_torchattacks_without_random_start(ours, theirs, eps, alpha):
    # torchattacks is a test-only reference, installed by `make test` (pip --no-deps).
    torchattacks = pytest.importorskip("torchattacks")
    model, (x, y) = _cnn(), _data()
    kwargs = {"eps": eps} if alpha is None else {"eps": eps, "alpha": alpha, "steps": 7, "random_start": False}
    ref = getattr(torchattacks, theirs)(model, **kwargs)(x, y)
    cfg = AttackConfig(eps=eps, steps=7, step_size=alpha, random_start=False)
    mine = attacks.get(ours).perturb(model, x, y, cfg)
    assert (mine - ref).abs().max() <= 1e-6


def test_robust_accuracy_curve_starts_at_clean_accuracy_and_falls():
    from pipeline.learn.robustness import robust_accuracy

    model = _linear()
    x, _ = _data(n=64)
    pixels = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    with torch.no_grad():  # labels the model gets right: clean accuracy 1
        y = model(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255).argmax(1)
    rows = robust_accuracy(model, pixels, y.numpy(), ["fgsm", "pgd"], [0.0, 0.05, 0.3], steps=5, seed=0)
    by = {(r["attack"], r["eps"]): r["accuracy"] for r in rows}
    assert by[("fgsm", 0.0)] == by[("pgd", 0.0)] == 1.0
    assert by[("pgd", 0.3)] <= by[("pgd", 0.05)] <= 1.0
    assert by[("pgd", 0.3)] <= by[("fgsm", 0.3)] + 1e-9  # PGD is at least as strong here
    assert by[("pgd", 0.3)] < 0.5
