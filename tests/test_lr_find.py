import numpy as np
import pandas as pd
import pytest
from fit_util import patterns, write_split

from pipeline import __main__ as cli
from pipeline.commands import lr_find
from pipeline.core import params
from pipeline.core.errors import PipelineError
from pipeline.core.params import LrFind, Train

CFG = Train(batch_size=32, width=8, threads=1, optimizer="sgd")


def test_sweep_is_exponential_stops_on_divergence_and_suggests_a_rate_inside_it():
    x, y = patterns(200)
    curve, lr = lr_find.lr_range_test(x, y, CFG, 4, 0, LrFind(min_lr=1e-4, max_lr=1e3, steps=60))
    assert list(curve.columns) == ["lr", "loss", "smoothed_loss"]
    ratios = curve["lr"].to_numpy()[1:] / curve["lr"].to_numpy()[:-1]
    assert np.allclose(ratios, (1e3 / 1e-4) ** (1 / 59))
    assert len(curve) < 60  # an LR of 1000 with SGD diverges before the end
    assert curve["lr"].min() <= lr <= curve["lr"].max()


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lr = np.logspace(-4, 0, 9)
    loss = np.array([2.3, 2.3, 2.2, 1.5, 1.0, 0.9, 0.95, 3.0, 9.0])
    assert lr_find.suggest(pd.DataFrame({"lr": lr, "smoothed_loss": loss})) == pytest.approx(lr[3])
    short = pd.DataFrame({"lr": lr[:3], "smoothed_loss": [2.0, 1.0, 5.0]})
    assert lr_find.suggest(short) == pytest.approx(lr[1] / 10)


def test_min_lr_must_be_below_max_lr():
    with pytest.raises(PipelineError, match="lr_find"):
        params.parse({"lr_find": {"min_lr": 1.0, "max_lr": 0.1}})


def test_stage_writes_the_curve_and_prints_the_suggestion(tmp_path, capsys):
    _, assemble, _ = write_split(tmp_path)
    (tmp_path / "params.yaml").write_text("train: {batch_size: 32, width: 8, threads: 1}\nlr_find: {steps: 20}\n")
    rc = cli.main(
        [
            "lr-find",
            "--quiet",
            "--params",
            str(tmp_path / "params.yaml"),
            "--train",
            str(assemble),
            "--out",
            str(tmp_path / "lr.csv"),
        ]
    )
    assert rc == 0
    assert "suggested train.lr" in capsys.readouterr().out
    curve = pd.read_csv(tmp_path / "lr.csv")
    assert 1 < len(curve) <= 20 and list(curve.columns) == ["lr", "loss", "smoothed_loss"]
