"""Temperature scaling, the ablation's rows and table, the offline dvc plots template (the report page
itself is checked on a real run in tests/test_e2e_dvc.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.commands import ablate, dvcplots
from pipeline.core import console, params
from pipeline.core.errors import PipelineError
from pipeline.stages import evaluate


def test_temperature_scaling_recovers_the_temperature_the_labels_were_drawn_at():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 5)).astype(np.float32)
    p = evaluate.softmax(logits, 2.5)
    y = np.array([rng.choice(5, p=row) for row in p])
    t = evaluate.fit_temperature(logits, y)
    assert abs(t - 2.5) < 0.2
    before = evaluate.expected_calibration_error(evaluate.softmax(logits), y)
    after = evaluate.expected_calibration_error(evaluate.softmax(logits, t), y)
    assert after < before / 3


def test_no_temperature_without_an_error_to_fit_on():
    logits = np.eye(4, dtype=np.float32) * 3
    assert evaluate.fit_temperature(logits, np.arange(4)) is None
    assert evaluate.fit_temperature(logits[:0], np.arange(0)) is None


def test_reliability_bins_carry_the_diagonal():
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    t = evaluate.reliability(proba, np.array([0, 1, 1]), 5)
    assert (t["count"] > 0).all() and (t["ideal"] == t["confidence"]).all()


def _params(**ablate_section) -> params.Params:
    return params.parse({"ablate": ablate_section})


def test_rows_are_all_none_and_all_but_one_without_repeats():
    mine = {"mine": {"with": {"mine.enabled": True}, "without": {"mine.enabled": False}}}
    p = _params(recipe=mine, seeds=1, budget={})
    assert ablate.rows(p) == {"all": {"mine.enabled": True}, "none": {"mine.enabled": False}}  # no-mine = none
    full = ablate.rows(params.parse({}))
    assert list(full) == [
        "all",
        "none",
        "no-clean",
        "no-mine",
        "no-augment",
        "no-mixing",
        "no-adversarial",
        "no-synthesize",
    ]  # fmt: skip  (no pool in the default project, so no pseudo row)
    assert full["no-clean"]["clean.action"] == "flag" and full["no-clean"]["mine.enabled"] is True
    pooled = ablate.rows(_params(set={"ingest.keep_labels": 0.05}))
    assert "no-pseudo" in pooled and pooled["all"]["ingest.keep_labels"] == 0.05


def test_a_recipe_entry_needs_both_sides():
    with pytest.raises(PipelineError, match="ablate.recipe.mine: expected both with and without, got no without"):
        ablate.rows(_params(recipe={"mine": {"with": {"mine.enabled": True}}}))


def test_every_row_gets_the_small_budget_unless_set_says_otherwise():
    rows = ablate.rows(params.parse({}))
    assert all(r["train.epochs"] == 12 and r["train.min_steps"] == 300 for r in rows.values())
    assert ablate.rows(_params(set={"train.epochs": 30}))["none"]["train.epochs"] == 30  # set wins
    assert "train.epochs" not in ablate.rows(_params(budget={}))["all"]  # {}: the shipped budget


def test_a_stages_estimate_comes_from_its_second_epoch_not_the_warm_up(monkeypatch, caplog):
    """The first epoch carries the warm-up: 2 s, then 0.5 s an epoch. 3 models x 10 epochs are
    2 + 29 x 0.5 = 16.5 s; from the first epoch alone it would say 60 s."""
    clock = iter([100.0, 102.0, 102.5, 103.0])
    monkeypatch.setattr(console.time, "perf_counter", lambda: next(clock))
    estimate = console.Estimate("oof", epochs=10, images=800, models=3)
    with caplog.at_level("INFO", logger="pipeline"):
        estimate.epoch_done(1)
        assert not caplog.records  # not yet: the first epoch is the warm-up
        estimate.epoch_done(2)
        estimate.epoch_done(3)  # told once
    assert [r.getMessage() for r in caplog.records] == [
        "oof: 3 models x 10 epochs on 800 images: about 0.3 min (0.50 s an epoch after the first's 2.0 s)"
    ]


def test_the_estimate_scales_the_last_runs_epoch_time_to_the_budget(tmp_path):
    times, train = tmp_path / "times.json", tmp_path / "train.json"
    p = _params(budget={"train.epochs": 12, "train.min_steps": 0})
    assert ablate.estimate(p, 10, times, train) == ""  # before any run
    times.write_text(json.dumps({"train": 100.0, "evaluate": 6.0}))
    train.write_text(json.dumps({"epochs_run": 50, "n_train": 1000}))
    assert ablate.estimate(p, 10, times, train).startswith(", at most about 5 min")  # 10 x (2 s x 12 + 6 s)
    p = _params(budget={"train.epochs": 12, "train.min_steps": 800, "train.max_epochs": 60})  # 8 steps an epoch
    assert ablate.estimate(p, 10, times, train).startswith(", at most about 21 min")  # 10 x (2 s x 60 + 6)
    train.write_text(json.dumps({"epochs_run": 50, "n_train": 5000, "n_schedule": 1000}))  # 4,000 pseudo rows
    assert ablate.estimate(p, 10, times, train).startswith(", at most about 21 min")  # their schedule is the 1,000's


def test_queue_commands_name_each_row_and_seed_and_set_train_seed():
    mine = {"mine": {"with": {"mine.enabled": True}, "without": {"mine.enabled": False}}}
    p = _params(recipe=mine, seeds=2, budget={})
    cmds = ablate.queue_commands(p)
    assert [c[4] for c in cmds] == ["abl-all-s0", "abl-all-s1", "abl-none-s0", "abl-none-s1"]
    assert cmds[1][:4] == ["exp", "run", "--queue", "-n"]
    assert cmds[1][5:] == ["-S", "mine.enabled=true", "-S", "train.seed=1"]


def _runs(acc: dict[str, float]) -> dict[str, dict]:
    return {
        name: {
            "metrics/evaluate.json": {
                "accuracy": a,
                "ece": 0.02,
                "robustness": {"pgd_eps0.1": a / 2, "fgsm_eps0.1": a / 2 + 0.1, "fgsm_eps0.05": 0.7, "n": 9},
            }
        }
        for name, a in acc.items()
    }


def test_the_table_gives_mean_std_delta_and_whether_it_exceeds_the_seed_noise():
    runs = _runs({"abl-all-s0": 0.90, "abl-all-s1": 0.92, "abl-none-s0": 0.80, "abl-none-s1": 0.81})
    runs |= _runs({"abl-no-mine-s0": 0.905, "abl-no-mine-s1": 0.915})
    runs["abl-no-augment-s0"] = {}  # queued, failed before evaluate
    t = ablate.table(runs)
    rows = {r["row"]: r for r in t["rows"]}
    assert [r["row"] for r in t["rows"]] == ["all", "none", "no-mine"]
    assert rows["all"]["accuracy"] == {"mean": 0.91, "std": pytest.approx(0.014142, abs=1e-6)}
    assert rows["none"]["delta_accuracy"] == pytest.approx(-0.105) and rows["none"]["beyond_noise"] is True
    assert rows["no-mine"]["delta_accuracy"] == pytest.approx(0.0) and rows["no-mine"]["beyond_noise"] is False
    assert rows["all"]["robust_accuracy"]["mean"] == pytest.approx(0.455)  # the worst attack at eps 0.1
    assert rows["all"]["robust_mean"]["mean"] == pytest.approx((0.455 + 0.555 + 0.7) / 3)  # every attack and eps
    assert t["failed"] == ["abl-no-augment-s0"]
    assert t["seed_std"] == pytest.approx(0.01)  # pooled: sqrt((0.0002 + 0.00005 + 0.00005) / 3)
    json.dumps(t)  # a metrics file


def test_two_seeds_that_agree_by_chance_do_not_make_a_difference_real():
    runs = _runs({"abl-all-s0": 0.910, "abl-all-s1": 0.9101, "abl-none-s0": 0.80, "abl-none-s1": 0.82})
    runs |= _runs({"abl-no-mine-s0": 0.914, "abl-no-mine-s1": 0.9141})
    rows = {r["row"]: r for r in ablate.table(runs)["rows"]}
    # by their own stds (7e-5) no-mine and all differ by 57 standard errors; the seed noise seen in
    # the none row says 0.004 is within it
    assert rows["no-mine"]["delta_accuracy"] == pytest.approx(0.004) and rows["no-mine"]["beyond_noise"] is False


def test_experiments_are_read_from_exp_show_json():
    shown = [
        {
            "rev": "workspace",
            "experiments": None,
        },
        {
            "rev": "abc",
            "experiments": [
                {
                    "name": "abl-all-s0",
                    "revs": [{"data": {"metrics": {"metrics/evaluate.json": {"data": {"accuracy": 1}}}}}],
                },
                {"name": "other", "revs": [{"data": {"metrics": {}}}]},
            ],
        },
    ]
    assert ablate.experiments(shown) == {"abl-all-s0": {"metrics/evaluate.json": {"accuracy": 1}}}
    # queued again after a failure: the name is listed twice, and the run that evaluated wins
    stale = {"name": "abl-all-s0", "revs": [{"data": {"metrics": {}}}]}
    for order in ([stale, *shown[1]["experiments"]], [*shown[1]["experiments"], stale]):
        found = ablate.experiments([{"rev": "abc", "experiments": order}])
        assert found == {"abl-all-s0": {"metrics/evaluate.json": {"accuracy": 1}}}


def test_the_offline_plots_template_inlines_vega_and_keeps_dvcs_placeholder():
    page = dvcplots.template()
    assert "{plot_divs}" in page and "{scripts}" not in page
    assert "window.vegaEmbed" in page and "<script src" not in page
