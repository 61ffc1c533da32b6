"""The linear probe: a multinomial logistic regression on a frozen backbone's features (the
course's transfer option 1, the ConvNet as a fixed feature extractor; what cleanlab's image
tutorials fit for `pred_probs`).

sklearn's `LogisticRegression` (lbfgs) on standardised features, fitted in `STEPS` warm-started
rounds of `ITERATIONS` iterations each: the probabilities after each round are the probe's
training dynamics (dataset cartography over the optimisation, as over a CNN's epochs). `classifier`
folds the standardisation into a linear head on the backbone, so a fold probe is a pipeline model
like any fold CNN (policy search and the synthetic-data gate score images with it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

STEPS = 8  # warm-started rounds: the probe's "epochs" for the training dynamics
ITERATIONS = 25  # lbfgs iterations per round (200 in all: converged on the features tried)


@dataclass
class Probe:
    mean: np.ndarray  # (D,) the features' standardisation ...
    scale: np.ndarray  # ... (D,)
    coef: np.ndarray  # (K, D) on standardised features
    intercept: np.ndarray  # (K,)

    def predict_proba(self, z: np.ndarray) -> np.ndarray:
        logits = ((z - self.mean) / self.scale) @ self.coef.T + self.intercept
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(1, keepdims=True)).astype(np.float32)


def fit(z: np.ndarray, y: np.ndarray, num_classes: int, c: float, seed: int, on_step=None) -> Probe:
    """A probe on features `z` (N, D) and labels `y` in [0, num_classes); `on_step(step, probe)`
    after each round (1-based). Classes absent from `y` get a large negative intercept."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    z = z.astype(np.float64)
    mean, scale = z.mean(0), np.maximum(z.std(0), 1e-6)
    zs = (z - mean) / scale
    present = np.unique(y)
    lr = LogisticRegression(C=c, max_iter=ITERATIONS, warm_start=True, random_state=seed)
    probe = None
    for step in range(1, STEPS + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # each round stops early on purpose
            lr.fit(zs, y)
        coef = np.zeros((num_classes, z.shape[1]))
        intercept = np.full(num_classes, -30.0)
        if len(present) == 2:  # sklearn's binary form: one row for the second class
            coef[present[1]], intercept[present[1]] = lr.coef_[0], lr.intercept_[0]
            coef[present[0]], intercept[present[0]] = 0.0, 0.0
        else:
            coef[present], intercept[present] = lr.coef_, lr.intercept_
        probe = Probe(mean, scale, coef, intercept)
        if on_step is not None:
            on_step(step, probe)
    return probe


def classifier(backbone: torch.nn.Module, probe: Probe) -> torch.nn.Module:
    """`backbone` (a `models.Classifier` whose `features` the probe was fitted on) with the probe as
    its head: logits = W ((f - mean) / scale) + b = (W / scale) f + (b - W mean / scale)."""
    import copy

    w = probe.coef / probe.scale
    b = probe.intercept - w @ probe.mean
    model = copy.deepcopy(backbone)
    model.head = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(w).float())
        model.head.bias.copy_(torch.from_numpy(b).float())
    model.num_classes = w.shape[0]
    return model.eval()
