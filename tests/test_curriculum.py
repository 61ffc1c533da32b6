import numpy as np
import pandas as pd
import pytest
import torch
from fit_util import patterns

from pipeline.augment import mixing
from pipeline.core import params
from pipeline.core.errors import PipelineError
from pipeline.learn import draws, fit
from pipeline.stages import assemble

CFG = params.Train(epochs=8, batch_size=16, width=8, lr=1e-2, threads=1, curriculum="easy_to_hard")


def test_pacing_starts_on_the_easiest_share_and_reaches_all_of_it_with_equal_steps():
    difficulty = np.arange(100, dtype=float)[::-1].copy()  # sample 99 is the easiest
    g = torch.Generator().manual_seed(0)
    first = draws.curriculum_order(difficulty, CFG, 1, 96, g, None)
    assert len(first) == 96 and set(first.tolist()) == set(range(75, 100))  # the easiest 25%, cycled
    middle = draws.curriculum_order(difficulty, CFG, 3, 96, g, None)  # 0.25 + 0.75 * 2/4
    assert set(middle.tolist()) <= set(range(37, 100)) and len(set(middle.tolist())) == 63
    late = draws.curriculum_order(difficulty, CFG, 5, 96, g, None)
    assert len(late) == 96 and len(set(late.tolist())) == 96  # all of it: an ordinary epoch
    hard = draws.curriculum_order(difficulty, CFG.model_copy(update={"curriculum": "hard_to_easy"}), 1, 96, g, None)
    assert set(hard.tolist()) == set(range(25))
    odds = torch.ones(100)
    odds[90:] = 0.0  # the hardness sampler never draws these: the curriculum draws within its odds
    sampled = draws.curriculum_order(difficulty, CFG, 1, 96, g, odds)
    assert len(sampled) == 96 and set(sampled.tolist()) <= set(range(75, 90))


def test_curriculum_composes_with_the_sampler_ohem_and_mixing_reproducibly():
    x, y = patterns(160)
    difficulty = np.random.default_rng(0).random(160)
    cfg = CFG.model_copy(update={"sampler": "hardness", "ohem_fraction": 0.5, "mixup_alpha": 0.2, "epochs": 3})
    runs = []
    for _ in range(2):  # each run with a new batch transform
        mix = mixing.make_batch_transform(cfg, 0)
        data = fit.Inputs(x, y, x[:0], y[:0], 4, sample_weight=difficulty + 0.5, difficulty=difficulty, mix=mix)
        runs.append(fit.fit(data, cfg, 0))
    a, b = (r.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a) and len(runs[0].history) == 3
    plain = cfg.model_copy(update={"curriculum": "none"})
    uniform = fit.fit(
        fit.Inputs(x, y, x[:0], y[:0], 4, sample_weight=difficulty + 0.5, mix=mixing.make_batch_transform(plain, 0)),
        plain,
        0,
    )
    assert not all(torch.equal(a[k], uniform.model.state_dict()[k]) for k in a)
    with pytest.raises(PipelineError, match="expected a difficulty per training sample"):
        fit.fit(fit.Inputs(x, y, x[:0], y[:0], 4, mix=mixing.make_batch_transform(cfg, 0)), cfg, 0)


def test_assemble_carries_mine_hardness_to_copies_and_the_median_elsewhere():
    split = pd.DataFrame(
        {
            "sample_id": ["t1", "t2", "t3", "u1"],
            "split": ["train", "train", "train", "unlabeled"],
            "origin": "real",
            "parent_id": None,
        }
    )
    derived = pd.DataFrame(
        {
            "sample_id": ["a1", "p1"],
            "split": "train",
            "origin": ["augmented", "pseudo"],
            "parent_id": ["t3", "u1"],
        }
    )
    weights = pd.DataFrame({"sample_id": ["t1", "t2", "t3"], "weight": 1.0, "hardness": [0.1, 0.5, 0.9]})
    out, _ = assemble.combine(split, {"d": derived}, 1.0, weights)
    assert dict(zip(out["sample_id"], out["hardness"])) == {"t1": 0.1, "t2": 0.5, "t3": 0.9, "a1": 0.9, "p1": 0.7}
