"""Class-conditional generators as plug-ins: a name, `fit`, and `decode(z, labels)`.

- `vae`: a conditional convolutional VAE (Kingma & Welling 2014; Sohn et al. 2015): two
  stride-2 convs down, the one-hot label joins the flattened features and the latent code,
  two stride-2 transposed convs up; Bernoulli (BCE) likelihood on pixels in [0, 1].
- `gan`: a conditional DCGAN (Radford et al. 2016) whose discriminator also classifies
  (ACGAN, Odena et al. 2017): the class loss on generated images is what makes the
  generator honour its conditioning label.

Both work on any square size divisible by 4 (8x8 digits, 28x28 Fashion-MNIST) and 1 or 3
channels. Training is deterministic given the seed: every draw happens inside a forked
global RNG seeded from it, under `runtime.deterministic()`, on `train.threads` threads.
Sampling draws nothing: the stage draws each sample's latent code from its own seed, so a
sample does not depend on the others or on the batch it was decoded in.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.core import params
from pipeline.core.console import log, progress
from pipeline.core.errors import PipelineError
from pipeline.core.registry import Registry

FORMAT_VERSION = 1


class Generator:
    """A class-conditional generator of uint8 NHWC images.

    A plug-in sets `name` (its `synthesize.<name>` knobs) and implements `build`, `fit` and
    `decode`; `networks` are the modules whose weights are checkpointed.
    """

    name: ClassVar[str]
    Knobs: ClassVar[type]  # its params model

    def __init__(self, knobs, image_shape: tuple[int, int, int], num_classes: int, seed: int):
        h, w, c = image_shape
        if h != w or h % 4 or h < 8:
            raise PipelineError(
                f"synthesize.{self.name}: expected square images with a side divisible by 4 (at least 8), got {h}x{w}; "
                "set ingest.image_size to one (auto does) or synthesize.enabled: false"
            )
        self.knobs, self.image_shape, self.num_classes, self.seed = knobs, tuple(image_shape), num_classes, seed
        self.latent_dim = knobs.latent_dim
        self.temperature = knobs.temperature
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.networks: dict[str, nn.Module] = self.build()

    def build(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def fit(self, x: np.ndarray, y: np.ndarray) -> list[dict]:
        """Train on uint8 NHWC images and their label ids; one history row per epoch."""
        if len(x) < 2:
            raise PipelineError(f"synthesize.{self.name}: expected at least 2 training images, got {len(x)}")
        from pipeline.learn.runtime import deterministic
        from pipeline.learn.tensors import to_float

        data = to_float(x)
        labels = torch.from_numpy(np.array(y, np.int64))
        bs = min(self.knobs.batch_size, len(x))
        history = []
        with torch.random.fork_rng(devices=[]), deterministic():
            torch.manual_seed(self.seed + 1)
            for epoch in progress(range(1, self.knobs.epochs + 1), desc=f"synthesize {self.name}", unit="epoch"):
                order = torch.randperm(len(x))
                sums: dict[str, float] = {}
                steps = len(x) // bs  # the remainder (a different one each epoch) is skipped
                for i in range(steps):
                    idx = order[i * bs : (i + 1) * bs]
                    for k, v in self.step(data[idx], labels[idx], epoch).items():
                        sums[k] = sums.get(k, 0.0) + v
                row = {"epoch": epoch, **{k: float(f"{v / steps:.6g}") for k, v in sums.items()}}
                history.append(row)
                log.info(
                    "synthesize %s: epoch %d/%d %s",
                    self.name,
                    epoch,
                    self.knobs.epochs,
                    " ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"),
                )
        for net in self.networks.values():
            net.eval()
        return history

    def step(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, float]:
        """One optimisation step on a batch (x float NCHW in [0, 1]) in `epoch` (1-based); the losses to log."""
        raise NotImplementedError

    def generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Float NCHW images in [0, 1] for latent codes and label ids (eval mode, no grad)."""
        raise NotImplementedError

    def latents(self, seeds: list[int], labels: np.ndarray) -> np.ndarray:
        """(N, latent_dim) float32 latent codes, one from each seed: the prior N(0, temperature^2)."""
        return np.array(
            [np.random.default_rng(s).standard_normal(self.latent_dim) * self.temperature for s in seeds], np.float32
        ).reshape(len(seeds), self.latent_dim)

    def decode(self, z: np.ndarray, labels: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """uint8 NHWC images for latent codes (N, latent_dim) and label ids (N,)."""
        out = []
        for net in self.networks.values():
            net.eval()
        with torch.no_grad():
            for i in range(0, len(z), batch_size):
                img = self.generate(
                    torch.from_numpy(np.asarray(z[i : i + batch_size], np.float32)),
                    torch.from_numpy(np.asarray(labels[i : i + batch_size], np.int64)),
                )
                out.append(torch.round(img.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
        return np.concatenate(out) if out else np.zeros((0, *self.image_shape), np.uint8)

    def config(self) -> dict:
        return {
            "generator": self.name,
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "seed": self.seed,
            "knobs": self.knobs.model_dump(),
        }

    def fingerprint(self) -> str:
        """A short hash of the weights: sample ids name the generator that made them."""
        h = hashlib.sha256()
        for name, net in sorted(self.networks.items()):
            for t in net.state_dict().values():
                h.update(t.detach().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


GENERATORS: Registry[type[Generator]] = Registry("generator (synthesize.generator)")
register = GENERATORS.register


def get(name: str) -> type[Generator]:
    return GENERATORS[name]


def build(name: str, knobs, image_shape, num_classes: int, seed: int) -> Generator:
    return get(name)(knobs, image_shape, num_classes, seed)


def _side(gen: Generator) -> tuple[int, int]:
    """(channels, side / 4): the feature map both nets meet at."""
    return gen.image_shape[2], gen.image_shape[0] // 4


class _Encoder(nn.Module):
    def __init__(self, c: int, s: int, w: int, k: int, latent: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c, w, 4, 2, 1), nn.ReLU(), nn.Conv2d(w, 2 * w, 4, 2, 1), nn.ReLU())
        self.fc = nn.Linear(2 * w * s * s + k, 2 * latent)

    def forward(self, x: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(torch.cat([self.conv(x).flatten(1), onehot], 1))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar


class _Decoder(nn.Module):
    """Latent code + one-hot label -> (2w, s, s) -> (w, 2s, 2s) -> (c, 4s, 4s); logits (VAE) or
    normalised feature maps (GAN, `batchnorm=True`)."""

    def __init__(self, c: int, s: int, w: int, k: int, latent: int, batchnorm: bool):
        super().__init__()
        self.shape = (2 * w, s, s)
        norm = (lambda n: nn.BatchNorm2d(n)) if batchnorm else (lambda n: nn.Identity())
        self.fc = nn.Linear(latent + k, 2 * w * s * s)
        self.up = nn.Sequential(
            norm(2 * w),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1),
            norm(w),
            nn.ReLU(),
            nn.ConvTranspose2d(w, c, 4, 2, 1),
        )

    def forward(self, z: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.up(self.fc(torch.cat([z, onehot], 1)).view(-1, *self.shape))


class _Mixture(nn.Module):
    """Per class, a Gaussian mixture over latent codes, held in buffers so it is checkpointed
    with the weights; one standard normal component per class until `fit`."""

    def __init__(self, k: int, m: int, d: int):
        super().__init__()
        self.register_buffer("weights", torch.zeros(k, m).index_fill_(1, torch.tensor([0]), 1.0))
        self.register_buffer("means", torch.zeros(k, m, d))
        self.register_buffer("chol", torch.eye(d).repeat(k, m, 1, 1))  # Cholesky factors of the covariances

    def fit(self, z: np.ndarray, labels: np.ndarray, seed: int) -> None:
        from sklearn.mixture import GaussianMixture

        m = self.means.shape[1]
        for c in range(self.means.shape[0]):
            zc = z[labels == c].astype(np.float64)
            if len(zc) < 2:  # nothing to fit: the class keeps the prior
                continue
            g = GaussianMixture(min(m, len(zc)), covariance_type="full", random_state=seed).fit(zc)
            n = g.n_components
            self.weights[c] = 0.0
            self.weights[c, :n] = torch.from_numpy(g.weights_ / g.weights_.sum()).float()
            self.means[c, :n] = torch.from_numpy(g.means_).float()
            # sklearn keeps U with precision = U U^T, so the covariance's Cholesky factor is U^-T
            self.chol[c, :n] = torch.from_numpy(np.linalg.inv(g.precisions_cholesky_).transpose(0, 2, 1)).float()

    def sample(self, seeds: list[int], labels: np.ndarray, temperature: float) -> np.ndarray:
        w, mu, chol = (t.double().numpy() for t in (self.weights, self.means, self.chol))
        d = mu.shape[2]
        out = np.empty((len(seeds), d), np.float32)
        for i, (s, c) in enumerate(zip(seeds, labels)):
            rng = np.random.default_rng(s)
            eps = rng.standard_normal(d) * temperature
            j = min(int(np.searchsorted(np.cumsum(w[c]), rng.random() * w[c].sum(), side="right")), len(w[c]) - 1)
            out[i] = mu[c, j] + chol[c, j] @ eps
        return out


@register
class VAE(Generator):
    name, Knobs = "vae", params.SynthVae

    def build(self) -> dict[str, nn.Module]:
        c, s = _side(self)
        w, k, d = self.knobs.width, self.num_classes, self.latent_dim
        nets = {"encoder": _Encoder(c, s, w, k, d), "decoder": _Decoder(c, s, w, k, d, batchnorm=False)}
        self.opt = torch.optim.Adam([p for n in nets.values() for p in n.parameters()], lr=self.knobs.lr)
        if self.knobs.prior == "mixture":
            nets["mixture"] = _Mixture(k, self.knobs.mixture_components, d)
        return nets

    def fit(self, x: np.ndarray, y: np.ndarray) -> list[dict]:
        history = super().fit(x, y)
        if "mixture" in self.networks:
            # ex-post density estimation (Ghosh et al. 2020): sample where the train images'
            # posterior means are, not from the whole N(0, I) the KL term only approximates
            self.networks["mixture"].fit(self.encode(x, y), np.asarray(y), self.seed)
        return history

    def latents(self, seeds: list[int], labels: np.ndarray) -> np.ndarray:
        if "mixture" not in self.networks:
            return super().latents(seeds, labels)
        return self.networks["mixture"].sample(seeds, np.asarray(labels), self.temperature)

    def step(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, float]:
        enc, dec = self.networks["encoder"], self.networks["decoder"]
        enc.train(), dec.train()
        onehot = F.one_hot(y, self.num_classes).float()
        mu, logvar = enc(x, onehot)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = F.binary_cross_entropy_with_logits(dec(z, onehot), x, reduction="sum") / len(x)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
        # KL warm-up (Bowman et al. 2016): without it the decoder learns to ignore z early on
        # and the samples collapse to one image per class
        loss = recon + self.knobs.beta * min(1.0, epoch / max(1, self.knobs.kl_warmup_epochs)) * kl
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"recon": recon.item(), "kl": kl.item()}

    def generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # the Bernoulli mean is a blur of the images the code could stand for; dividing the logits
        # by pixel_temperature < 1 moves each pixel towards its likelier side (sharper edges)
        logits = self.networks["decoder"](z, F.one_hot(y, self.num_classes).float())
        return torch.sigmoid(logits / self.knobs.pixel_temperature)

    def encode(self, x: np.ndarray, y: np.ndarray, batch_size: int = 2048) -> np.ndarray:
        """Posterior means of uint8 NHWC images."""
        from pipeline.learn.tensors import to_float

        enc, out = self.networks["encoder"].eval(), []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xt = to_float(np.array(x[i : i + batch_size]))
                onehot = F.one_hot(torch.from_numpy(np.array(y[i : i + batch_size], np.int64)), self.num_classes)
                out.append(enc(xt, onehot.float())[0].numpy())
        return np.concatenate(out) if out else np.zeros((0, self.latent_dim), np.float32)


class _Discriminator(nn.Module):
    """Two stride-2 convs (LeakyReLU, BN on the second), then a real/fake logit and class logits."""

    def __init__(self, c: int, s: int, w: int, k: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(c, w, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1),
            nn.BatchNorm2d(2 * w),
            nn.LeakyReLU(0.2),
        )
        self.adv = nn.Linear(2 * w * s * s, 1)
        self.aux = nn.Linear(2 * w * s * s, k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(x * 2 - 1).flatten(1)
        return self.adv(h)[:, 0], self.aux(h)


def _dcgan_init(net: nn.Module) -> None:
    """DCGAN's N(0, 0.02) weights (BN scales N(1, 0.02)); drawn from the forked, seeded RNG."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


@register
class GAN(Generator):
    name, Knobs = "gan", params.SynthGan
    REAL_TARGET = 0.9  # one-sided label smoothing on real images (Salimans et al. 2016)

    def build(self) -> dict[str, nn.Module]:
        c, s = _side(self)
        w, k, d = self.knobs.width, self.num_classes, self.latent_dim
        nets = {"generator": _Decoder(c, s, w, k, d, batchnorm=True), "discriminator": _Discriminator(c, s, w, k)}
        for net in nets.values():
            _dcgan_init(net)
        betas = (0.5, 0.999)
        self.opt_g = torch.optim.Adam(nets["generator"].parameters(), lr=self.knobs.lr, betas=betas)
        self.opt_d = torch.optim.Adam(nets["discriminator"].parameters(), lr=self.knobs.lr, betas=betas)
        return nets

    def step(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, float]:
        g, d = self.networks["generator"], self.networks["discriminator"]
        g.train(), d.train()
        n, k, aux = len(x), self.num_classes, self.knobs.aux_weight
        z = torch.randn(n, self.latent_dim)
        y_fake = torch.randint(0, k, (n,))
        fake = torch.sigmoid(g(z, F.one_hot(y_fake, k).float()))
        adv_r, cls_r = d(x)
        adv_f, cls_f = d(fake.detach())
        loss_d = (
            F.binary_cross_entropy_with_logits(adv_r, torch.full_like(adv_r, self.REAL_TARGET))
            + F.binary_cross_entropy_with_logits(adv_f, torch.zeros_like(adv_f))
            + aux * (F.cross_entropy(cls_r, y) + F.cross_entropy(cls_f, y_fake))
        )
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        adv_g, cls_g = d(fake)
        loss_g = F.binary_cross_entropy_with_logits(adv_g, torch.ones_like(adv_g)) + aux * F.cross_entropy(
            cls_g, y_fake
        )
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return {
            "loss_d": loss_d.item(),
            "loss_g": loss_g.item(),
            "d_real_acc": (cls_r.argmax(1) == y).float().mean().item(),
        }

    def generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.networks["generator"](z, F.one_hot(y, self.num_classes).float()))


def save(path: str | Path, gen: Generator, classes: list[str], history: list[dict]) -> None:
    """Atomically write {state_dicts, config, classes, history}; the same weights give the same bytes."""
    path = Path(path)
    state = {
        name: {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
        for name, net in gen.networks.items()
    }
    buf = io.BytesIO()
    torch.save(
        {
            "format_version": FORMAT_VERSION,
            "state_dict": state,
            "config": gen.config(),
            "classes": list(classes),
            "history": history,
        },
        buf,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def load(path: str | Path) -> tuple[Generator, list[str]]:
    """(generator in eval mode, classes) from a `save` file."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: no such generator file (has the synthesize stage run?)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format_version") != FORMAT_VERSION:
        raise PipelineError(f"{path}: not a generator file of format version {FORMAT_VERSION}")
    cfg = blob["config"]
    cls = get(cfg["generator"])
    gen = cls(cls.Knobs(**cfg["knobs"]), tuple(cfg["image_shape"]), cfg["num_classes"], cfg["seed"])
    for name, net in gen.networks.items():
        net.load_state_dict(blob["state_dict"][name])
        net.eval()
    return gen, list(blob["classes"])
