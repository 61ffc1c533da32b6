"""The training core shared by oof, adversarial, synthesize and train: pure functions over
uint8 NHWC arrays.

`fit` trains a registered model (pipeline.learn.models) with SGD (Nesterov) or AdamW, a linear
warm-up then cosine decay to zero (per step), label smoothing, weight decay on conv/linear
weights only, optional inverse-frequency class weights and per-sample weights, and early
stopping on the validation loss (the weights of the latest epoch within noise of the best are
restored: `within_noise`).

Reproducible: the same inputs and seed give a bitwise-identical `state_dict` on the same
machine and thread count. Initialisation and shuffling draw from a local generator seeded
from `seed`, so nothing depends on global RNG state left by other code.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.core.console import log, progress
from pipeline.core.errors import PipelineError
from pipeline.core.params import Train
from pipeline.learn import checkpoints, draws, inference, losses, models, runtime, tensors


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)  # one row per epoch run
    best_epoch: int = 0  # 1-based; the epoch whose weights `model` holds
    config: dict = field(default_factory=dict)  # enough to rebuild the model (see load_model)


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NHWC pixels, in [0, 1] units (float64 sums)."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
    mean, std = flat.mean(axis=0), flat.std(axis=0)
    return [round(float(m), 6) for m in mean], [round(float(max(s, 1e-3)), 6) for s in std]


def class_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse class frequency, normalised so that the mean weight over samples is 1."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes)
    w[present] = len(y) / (present.sum() * counts[present])
    return w


def size_aware_epochs(n: int, batch_size: int, epochs: int, min_steps: int, max_epochs: int) -> int:
    """`epochs`, or more where that would be fewer than `min_steps` optimizer steps over `n`
    samples (small data: 8 epochs of 3,200 images are 200 steps), at most `max_epochs`."""
    steps = max(1, n // max(1, min(batch_size, n)))
    return int(min(max(epochs, math.ceil(min_steps / steps)), max(max_epochs, epochs)))


def schedule(cfg: Train, n: int) -> Train:
    """Size-aware: `train.epochs` at least, more to reach `train.min_steps` optimizer steps on
    small data, with the early-stopping patience stretched in proportion."""
    epochs = size_aware_epochs(n, cfg.batch_size, cfg.epochs, cfg.min_steps, cfg.max_epochs)
    return cfg.model_copy(
        update={"epochs": epochs, "patience": max(cfg.patience, round(cfg.patience * epochs / cfg.epochs))}
    )


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total` (step is 0-based)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def make_optimizer(model: nn.Module, cfg: Train, body_lr: float = 1.0) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only: decaying norm scales and biases only hurts. The
    body's groups learn at `body_lr` x the schedule's rate (`lr_scale`; fine-tuning's lower rate)."""
    body = {id(p) for p in model.body.parameters()} if hasattr(model, "body") else set()
    groups = []
    for in_body, scale in ((True, body_lr), (False, 1.0)):
        mine = [p for p in model.parameters() if (id(p) in body) == in_body]
        groups += [
            {"params": [p for p in mine if p.ndim > 1], "weight_decay": cfg.weight_decay, "lr_scale": scale},
            {"params": [p for p in mine if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale},
        ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


def new_model(
    x_train: np.ndarray, cfg: Train, num_classes: int, generator: torch.Generator, input_size: int | None = None
) -> nn.Module:
    """A fresh `cfg.model` normalising with `x_train`'s channel statistics (resizing its input to
    `input_size`, if given)."""
    if len(x_train) == 0:
        raise PipelineError("no training samples: the training set is empty")
    mean, std = channel_stats(x_train)
    model = models.build_model(
        cfg.model, x_train.shape[-1], num_classes, cfg.width, mean, std, generator=generator, input_size=input_size
    )
    return model.to(memory_format=torch.channels_last)


def val_losses(
    model: nn.Module, x8: torch.Tensor, y: torch.Tensor, batch_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-image cross-entropy without smoothing, per-image correct) in eval mode."""
    model.eval()
    losses, correct = [], []
    batch_size = batch_size or inference.inference_batch(x8.shape[2:])
    dev = tensors.device_of(model)
    with torch.inference_mode():
        for i in range(0, len(x8), batch_size):
            logits = model(tensors.to_unit(x8[i : i + batch_size], dev))
            yb = y[i : i + batch_size].to(dev)
            losses.append(F.cross_entropy(logits, yb, reduction="none").cpu())
            correct.append((logits.argmax(1) == yb).cpu())
    return torch.cat(losses).double(), torch.cat(correct)


def evaluate_loss(
    model: nn.Module, x8: torch.Tensor, y: torch.Tensor, batch_size: int | None = None
) -> tuple[float, float]:
    """(mean cross-entropy without smoothing, accuracy) in eval mode."""
    losses, correct = val_losses(model, x8, y, batch_size)
    return float(losses.mean()), float(correct.double().mean())


def within_noise(losses: torch.Tensor, best: torch.Tensor) -> bool:
    """Whether an epoch's per-image val losses are worse than the best epoch's by no more than one
    standard error of their paired difference. On a few hundred val images the epoch with the
    lowest mean is mostly noise (80 images picked epoch 4 of 30 for a pseudo-labeled set), so
    model selection keeps the latest epoch within noise of the best: later in the cosine schedule,
    at a lower learning rate. On thousands of images the standard error is small and the rule is
    plain early stopping."""
    d = losses - best
    se = float(d.std()) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    return float(d.mean()) <= se


class BatchStep:
    """The forward pass of one training batch: (logits, per-sample loss), with the options.

    In order: `online(x_uint8_NHWC, sample_ids, epoch)` applies an augmentation policy;
    adversarial examples made against the current model replace `cfg.adversarial.ratio` of
    the batch; mixup / CutMix / random erasing mix the batch with soft targets. `soft`: the
    training samples' own soft targets (N, K) in place of the smoothed one-hot labels. With every
    option off this is the plain cross-entropy step and draws no random numbers, so a run
    is byte-identical to one that never had the options.
    """

    def __init__(
        self,
        cfg: Train,
        num_classes: int,
        seed: int,
        x_train: np.ndarray,
        sample_ids: list[str] | None = None,
        online=None,
        mix=None,
        soft: np.ndarray | None = None,
    ):
        if online is not None and sample_ids is None:
            raise PipelineError("online augmentation needs the training samples' ids")
        wants_mix = cfg.mixup_alpha > 0 and cfg.mix_prob > 0 or cfg.cutmix_alpha > 0 and cfg.mix_prob > 0
        if mix is None and (wants_mix or cfg.random_erasing > 0):
            raise PipelineError(
                "train.mixup_alpha / cutmix_alpha / random_erasing are on but fit was given no batch "
                "transform (the stage builds it: augment.mixing.make_batch_transform)"
            )
        self.cfg, self.num_classes, self.x_train = cfg, num_classes, x_train
        self.sample_ids, self.online, self.mix = sample_ids, online, mix
        self.soft = None if soft is None else torch.from_numpy(np.asarray(soft, np.float32))
        on = cfg.adversarial.attack != "none" and cfg.adversarial.ratio > 0
        self.adv = cfg.adversarial if on else None

    def __call__(
        self, model: nn.Module, x8: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, epoch: int, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        xb8 = x8[idx]
        if self.online is not None:
            ids = [self.sample_ids[i] for i in idx.tolist()]
            xb8 = tensors.to_tensor(self.online(self.x_train[idx.numpy()], ids, epoch))
        dev = tensors.device_of(model)
        xb, yb = tensors.to_unit(xb8, dev), y[idx].to(dev)
        if self.adv is not None:
            xb = self._adversarial(model, xb, yb, g)
        if self.mix is None and self.soft is None:
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, reduction="none", label_smoothing=self.cfg.label_smoothing)
            if self.cfg.focal_gamma > 0:
                p_t = torch.softmax(logits, 1).gather(1, yb[:, None])[:, 0]
                loss = (1 - p_t).pow(self.cfg.focal_gamma) * loss
            return logits, loss
        if self.soft is None:
            soft = losses.one_hot(yb, self.num_classes, self.cfg.label_smoothing)
        else:
            soft = self.soft[idx].to(dev)
        if self.mix is not None:
            xb, soft = self.mix(xb, soft, g)
        logits = model(xb.contiguous(memory_format=torch.channels_last))
        loss = losses.soft_cross_entropy(logits, soft)
        if self.cfg.focal_gamma > 0:  # p_t of a soft target: the probability mass it agrees with
            loss = (1 - (torch.softmax(logits, 1) * soft).sum(1)).pow(self.cfg.focal_gamma) * loss
        return logits, loss

    def _adversarial(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        from pipeline.learn import attacks

        a = self.adv
        model = getattr(model, "module", model)  # under DDP, the attack's gradients are its own business
        k = round(a.ratio * len(xb))  # the batch is already in random order: take the first k
        cfg = attacks.AttackConfig(eps=a.eps, steps=a.steps, step_size=a.step_size, random_start=a.random_start)
        adv = attacks.get(a.attack).perturb(model, xb[:k], yb[:k], cfg, g)
        return torch.cat([adv, xb[k:]]).contiguous(memory_format=torch.channels_last)


def train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x8: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    lrs: list[float],
    step: BatchStep,
    epoch: int,
    g: torch.Generator,
    ohem_fraction: float = 0.0,
    unlabeled=None,
    order_u: torch.Tensor | None = None,
) -> tuple[float, float]:
    """One pass over the samples `order` names, step i at learning rate lrs[i].

    `ohem_fraction` > 0: online hard example mining, only the largest per-sample losses of
    each batch (that fraction of it, at least one) contribute to the gradient.
    `unlabeled` (a `fixmatch.Unlabeled`): step i adds the consistency loss of the next
    `unlabeled.per_step(batch_size)` draws of `order_u` (`Unlabeled.order`).
    Under DDP every process draws the same `order` and takes its share of each batch (rank r:
    every world-th sample from r), so the global batch is the same as with one process.
    Returns the mean (unweighted, smoothed) training loss and the training accuracy.
    """
    rank, size = runtime.world()
    model.train()
    loss_sum, correct = 0.0, 0
    for i, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        idx = order[i * batch_size : (i + 1) * batch_size][rank::size]
        logits, per_sample = step(model, x8, y, idx, epoch, g)
        opt.zero_grad(set_to_none=True)
        weighted = per_sample * weight[idx].to(per_sample.device)
        if 0 < ohem_fraction < 1:
            k = max(1, math.ceil(ohem_fraction * len(idx)))
            weighted = weighted[torch.topk(per_sample.detach(), k).indices]
        loss = weighted.mean()
        if unlabeled is not None:
            n_u = unlabeled.per_step(batch_size)
            loss = loss + unlabeled.loss(model, order_u[i * n_u : (i + 1) * n_u])
        loss.backward()
        opt.step()
        loss_sum += float(per_sample.detach().sum())
        correct += int((logits.detach().argmax(1).cpu() == y[idx]).sum())
    if size > 1:  # the epoch's figures over every process's share
        import torch.distributed as dist

        totals = torch.tensor([loss_sum, correct], dtype=torch.float64, device=tensors.device_of(model))  # nccl: CUDA
        dist.all_reduce(totals)
        loss_sum, correct = float(totals[0]), int(totals[1])
    return loss_sum / len(order), correct / len(order)


@dataclass(frozen=True)
class Inputs:
    """What `fit` trains on: uint8 NHWC pixels and their labels, and what the stage adds to them.

    `x_val` may be empty: then no early stopping, the last epoch's model is kept.
    `sample_weight`: loss weights, or with `cfg.sampler == "hardness"` the odds of drawing
    each sample (with replacement; every loss then weighs the same).
    `sample_ids` and `online`: the samples' ids and an online augmentation policy (BatchStep).
    `mix`: the batch transform (mixup / CutMix / random erasing) that `cfg` asks for, built by
    the stage (`augment.mixing.make_batch_transform`), so the training core imports no stage.
    `difficulty`: per sample, higher = harder (the mine stage's hardness), which orders the
    samples under `cfg.curriculum` (`curriculum_order`); needed unless it is "none".
    `soft_targets`: (N, K) targets that replace the smoothed one-hot labels (train.soft_labels).
    `unlabeled`: a `fixmatch.Unlabeled` pool whose consistency loss joins every step (FixMatch);
    each history row then has its `epoch_stats`.
    `input_size`: the model resizes its input to this side (a backbone at its pretraining size).
    `init`: a model to train instead of a new `cfg.model` (a pretrained backbone with a new head,
    `backbones.for_training`): its head alone for `cfg.finetune.head_epochs` epochs, or throughout
    with `cfg.finetune.freeze`, then all of it, the body at `cfg.finetune.body_lr` x the rate.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int
    sample_weight: np.ndarray | None = None
    sample_ids: list[str] | None = None
    difficulty: np.ndarray | None = None
    soft_targets: np.ndarray | None = None
    unlabeled: object = None
    online: object = None
    mix: object = None
    init: nn.Module | None = None
    input_size: int | None = None


def fit(
    inputs: Inputs,
    cfg: Train,
    seed: int,
    device: torch.device | None = None,
    desc: str = "train",
    on_epoch_end=None,
) -> FitResult:
    """Train `cfg.model` on `inputs`; early-stop on their val images when there are any.

    `device`: where the model trains (`runtime.device(base.device)`; None: the CPU). The pixels stay
    on the CPU as uint8 and go over a batch at a time; the returned model stays on `device`.
    `on_epoch_end(model, epoch)`: called after each epoch (and its validation), e.g. to
    record training dynamics; it must not train the model.
    """
    x_train, x_val, num_classes = inputs.x_train, inputs.x_val, inputs.num_classes
    sample_weight, sample_ids, difficulty = inputs.sample_weight, inputs.sample_ids, inputs.difficulty
    soft_targets, unlabeled, online, mix = inputs.soft_targets, inputs.unlabeled, inputs.online, inputs.mix
    init, input_size = inputs.init, inputs.input_size
    y_train, y_val = np.asarray(inputs.y_train, np.int64), np.asarray(inputs.y_val, np.int64)
    if len(x_train) != len(y_train) or len(x_val) != len(y_val):
        raise PipelineError(
            f"expected one label per image, got {len(y_train)} for {len(x_train)} "
            f"(train) and {len(y_val)} for {len(x_val)} (val)"
        )
    if len(x_val) and x_val.shape[1:] != x_train.shape[1:]:
        raise PipelineError(f"expected val images of shape {x_train.shape[1:]}, got {x_val.shape[1:]}")
    if len(y_train) and (y_train.min() < 0 or y_train.max() >= num_classes):
        raise PipelineError(f"expected labels in [0, {num_classes}), got {y_train.min()}..{y_train.max()}")
    if cfg.curriculum != "none" and (difficulty is None or len(difficulty) != len(y_train)):
        raise PipelineError(f"train.curriculum {cfg.curriculum}: expected a difficulty per training sample")
    runtime.set_threads(cfg)
    g = torch.Generator().manual_seed(seed)
    model = (new_model(x_train, cfg, num_classes, g, input_size) if init is None else init).to(device)
    config = checkpoints.model_config(model, x_train, cfg, num_classes, seed)
    weight = np.ones(len(y_train)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    if cfg.class_weights:
        weight = weight * class_weights(y_train, num_classes)[y_train]
    if len(weight) != len(y_train) or (weight < 0).any() or weight.sum() <= 0:
        raise PipelineError(f"expected {len(y_train)} non-negative sample weights with a positive sum")
    weight_t = torch.from_numpy(weight / weight.mean()).float()  # relative: the LR keeps its meaning
    odds = None
    if cfg.sampler == "hardness":
        odds, weight_t = weight_t, torch.ones(len(weight_t))
    x8, y = tensors.to_tensor(x_train), torch.tensor(y_train)
    xv8, yv = (tensors.to_tensor(x_val), torch.tensor(y_val)) if len(x_val) else (None, None)
    opt = make_optimizer(model, cfg, 1.0 if init is None else cfg.finetune.body_lr)
    if soft_targets is not None and np.shape(soft_targets) != (len(y_train), num_classes):
        raise PipelineError(
            f"expected soft targets of shape ({len(y_train)}, {num_classes}), got {np.shape(soft_targets)}"
        )
    if unlabeled is not None:  # FixMatch: labeled images get the weak view too
        online = unlabeled.labeled_view(online)
        sample_ids = sample_ids if sample_ids is not None else [f"#{i}" for i in range(len(y_train))]
    step = BatchStep(cfg, num_classes, seed, x_train, sample_ids, online, mix, soft_targets)
    bs = min(cfg.batch_size, len(y))
    _, size = runtime.world()
    if size > 1 and bs % size:  # unequal shares would draw different random numbers per process
        raise PipelineError(f"train.batch_size {bs} must be a multiple of train.nproc {size} (each takes a share)")
    if size > 1 and unlabeled is not None:
        raise PipelineError("train.unlabeled (FixMatch) runs in one process: set train.nproc 1")
    gpu = [tensors.device_of(model).index] if tensors.device_of(model).type == "cuda" else None
    net = nn.parallel.DistributedDataParallel(model, device_ids=gpu) if size > 1 else model
    steps_per_epoch = len(y) // bs  # the remainder (a different one each epoch) is skipped
    total, warmup = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)

    history: list[dict] = []
    best, kept = None, (0, None)  # the lowest-mean epoch's per-image val losses; (epoch, state) restored
    bad_epochs = 0
    bar = progress(range(1, cfg.epochs + 1), desc=desc, unit="epoch")
    with runtime.deterministic():
        for epoch in bar:
            t0 = time.perf_counter()
            if init is not None:  # fine-tuning: the new head alone first (or throughout, frozen)
                frozen = cfg.finetune.freeze or epoch <= cfg.finetune.head_epochs
                model.frozen_body = frozen
                model.body.requires_grad_(not frozen)
            first = (epoch - 1) * steps_per_epoch
            lrs = [lr_at(s, total, warmup, cfg.lr) for s in range(first, first + steps_per_epoch)]
            if cfg.curriculum != "none":
                order = draws.curriculum_order(difficulty, cfg, epoch, steps_per_epoch * bs, g, odds)
            elif odds is None:
                order = torch.randperm(len(y), generator=g)[: steps_per_epoch * bs]
            else:
                order = torch.multinomial(odds, steps_per_epoch * bs, replacement=True, generator=g)
            order_u = None if unlabeled is None else unlabeled.order(steps_per_epoch * unlabeled.per_step(bs), g, epoch)
            loss, acc = train_epoch(
                net, opt, x8, y, weight_t, order, bs, lrs, step, epoch, g, cfg.ohem_fraction, unlabeled, order_u
            )
            if size > 1:  # batch-norm statistics from process 0, so every process validates one model
                _broadcast_buffers(model)
            row = {
                "epoch": epoch,
                "lr": lrs[-1],
                "train_loss": loss,
                "train_accuracy": acc,
                "val_loss": None,
                "val_accuracy": None,
                **({} if unlabeled is None else unlabeled.epoch_stats()),
            }
            if xv8 is not None:
                losses, correct = val_losses(model, xv8, yv)
                row["val_loss"], row["val_accuracy"] = float(losses.mean()), float(correct.double().mean())
            history.append({k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in row.items()})
            _log_epoch(desc, row, cfg.epochs, time.perf_counter() - t0)
            shown = ("val_loss", "val_accuracy", "mask_rate", "mask_precision")
            bar.set_postfix({k: f"{row[k]:.4f}" for k in shown if row.get(k) is not None})
            if on_epoch_end is not None:
                on_epoch_end(model, epoch)
            if xv8 is None:
                continue
            if best is None or row["val_loss"] < float(best.mean()):
                best = losses
            if within_noise(losses, best):
                kept, bad_epochs = (epoch, copy.deepcopy(model.state_dict())), 0
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    log.info("%s: early stop after epoch %d (kept epoch %d)", desc, epoch, kept[0])
                    break
    bar.close()
    if kept[1] is not None:
        model.load_state_dict(kept[1])
    model.eval()
    return FitResult(model, history, kept[0] if kept[1] is not None else len(history), config)


def _broadcast_buffers(model: nn.Module) -> None:
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b, 0)


def _log_epoch(desc: str, row: dict, epochs: int, seconds: float) -> None:
    val = f" val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.4f}" if row["val_loss"] is not None else ""
    if "mask_rate" in row:  # FixMatch: the share of pool draws whose target counted (and how many were right)
        val += f" unlabeled_loss {row['unlabeled_loss']:.4f} mask_rate {row['mask_rate']:.3f}"
        val += f" mask_precision {row['mask_precision']:.3f}" if row.get("mask_precision") is not None else ""
    log.info(
        "%s: epoch %d/%d lr %.3g train_loss %.4f train_acc %.4f%s (%.1fs)",
        desc,
        row["epoch"],
        epochs,
        row["lr"],
        row["train_loss"],
        row["train_accuracy"],
        val,
        seconds,
    )
