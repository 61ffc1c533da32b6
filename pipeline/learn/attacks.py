"""Adversarial attacks as plug-ins: FGSM and PGD (L-inf and L2), untargeted or targeted.

Every attack works in [0, 1] pixel space on a model that normalises inside itself, and
returns images clipped to the valid range. The update order follows Goodfellow et al. 2014
(FGSM) and Madry et al. 2017 (PGD) as torchattacks implements them, so that the two agree
to float precision on the same model and inputs (tests/test_attacks.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.core.registry import Registry
from pipeline.learn import tensors


@dataclass(frozen=True)
class AttackConfig:
    eps: float
    steps: int = 10
    step_size: float | None = None  # None: 2.5 * eps / steps (Madry et al.)
    random_start: bool = True
    targeted: bool = False

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / max(self.steps, 1)


class Attack:
    """An attack: `name`, `norm`, and `perturb(model, x, y, cfg, generator) -> x_adv`.

    For a targeted attack `y` holds the target classes and the loss is descended.
    """

    name: str = ""
    norm: str = "linf"

    def perturb(self, model, x, y, cfg: AttackConfig, generator: torch.Generator | None = None):
        raise NotImplementedError


def _grad(model, x_adv: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    x_adv = x_adv.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x_adv), y)
    (grad,) = torch.autograd.grad(-loss if targeted else loss, x_adv)
    return grad


class FGSM(Attack):
    name, norm = "fgsm", "linf"

    def perturb(self, model, x, y, cfg, generator=None):
        grad = _grad(model, x, y, cfg.targeted)
        return (x + cfg.eps * grad.sign()).clamp(0, 1).detach()


class PGD(Attack):
    name, norm = "pgd", "linf"

    def start(self, x, cfg, generator):
        return cfg.eps * (torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1)

    def step(self, grad, cfg):
        return cfg.alpha * grad.sign()

    def project(self, delta, cfg):
        return delta.clamp(-cfg.eps, cfg.eps)

    def perturb(self, model, x, y, cfg, generator=None):
        """Projected gradient descent from `start` (cfg.random_start) in `cfg.steps` steps."""
        x = x.detach()
        x_adv = x.clone()
        if cfg.random_start:
            x_adv = (x + self.start(x, cfg, generator).to(x.device)).clamp(0, 1)  # drawn on a CPU generator
        for _ in range(cfg.steps):
            grad = _grad(model, x_adv, y, cfg.targeted)
            x_adv = x_adv.detach() + self.step(grad, cfg)
            x_adv = (x + self.project(x_adv - x, cfg)).clamp(0, 1).detach()
        return x_adv


def _l2(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (v.dim() - 1)))


class PGDL2(PGD):
    name, norm = "pgd_l2", "l2"

    def start(self, x, cfg, generator):
        """A uniform draw from the L2 ball: a random direction, a random radius."""
        delta = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        r = torch.rand((len(x),) + (1,) * (x.dim() - 1), generator=generator, dtype=x.dtype)
        return delta / (_l2(delta) + 1e-12) * r * cfg.eps

    def step(self, grad, cfg):
        return cfg.alpha * grad / (_l2(grad) + 1e-10)

    def project(self, delta, cfg):
        return delta * torch.clamp(cfg.eps / (_l2(delta) + 1e-12), max=1.0)


ATTACKS: Registry[Attack] = Registry("attack", ((a.name, a) for a in (FGSM(), PGD(), PGDL2())))


def get(name: str) -> Attack:
    return ATTACKS[name]


def attack_batches(
    model, x: torch.Tensor, y: torch.Tensor, attack: str, cfg: AttackConfig, seed: int = 0, batch_size: int = 256
) -> torch.Tensor:
    """Run `attack` over (x, y) in batches with the model in eval mode, on its device; deterministic in
    seed. The adversarial examples come back on the CPU."""
    atk, dev = get(attack), tensors.device_of(model)
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out = [
        atk.perturb(model, x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev), cfg, gen).cpu()
        for i in range(0, len(x), batch_size)
    ]
    model.train(was_training)
    return torch.cat(out) if out else x.clone()
