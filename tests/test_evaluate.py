import json
import logging

import numpy as np
import pandas as pd
import pytest
import yaml
from fit_util import RANDAUGMENT, write_split

from pipeline import __main__ as cli
from pipeline.core import params
from pipeline.stages import evaluate


def _onehotish(pred, k, conf):
    p = np.full((len(pred), k), 0.0)
    p[np.arange(len(pred)), pred] = conf
    for i, c in enumerate(pred):  # spread the rest over the other classes
        p[i, [j for j in range(k) if j != c]] = (1 - conf[i]) / (k - 1)
    return p


def test_ece_on_a_hand_made_case():
    # bin (0.8, 0.9]: confidences 0.85, 0.85, one right -> |0.5 - 0.85| = 0.35, weight 1/2
    # bin (0.5, 0.6]: confidences 0.55, 0.55, both right -> |1 - 0.55| = 0.45, weight 1/2
    proba = _onehotish(np.array([0, 0, 1, 1]), 2, np.array([0.85, 0.85, 0.55, 0.55]))
    y = np.array([0, 1, 1, 1])
    assert evaluate.expected_calibration_error(proba, y, bins=10) == pytest.approx(0.4)
    perfect = _onehotish(np.array([0, 1]), 2, np.array([1.0, 1.0]))
    assert evaluate.expected_calibration_error(perfect, np.array([0, 1]), bins=15) == pytest.approx(0.0)


def test_score_agrees_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    k, n = 10, 300
    proba = rng.dirichlet(np.ones(k) * 0.3, n)
    y = np.where(rng.random(n) < 0.6, proba.argmax(1), rng.integers(0, k, n))
    classes = [f"c{i}" for i in range(k)]
    m = evaluate.score(proba, y, classes, ece_bins=15)
    pred = proba.argmax(1)
    p, r, f, s = metrics.precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    assert m["accuracy"] == pytest.approx(metrics.accuracy_score(y, pred), abs=1e-6)
    assert m["macro_f1"] == pytest.approx(metrics.f1_score(y, pred, average="macro"), abs=1e-6)
    assert m["top5_accuracy"] == pytest.approx(metrics.top_k_accuracy_score(y, proba, k=5), abs=1e-6)
    assert m["nll"] == pytest.approx(metrics.log_loss(y, proba, labels=range(k)), abs=1e-5)
    assert [m["per_class"][c]["f1"] for c in classes] == pytest.approx(f, abs=1e-6)
    assert [m["per_class"][c]["support"] for c in classes] == list(s)
    assert m["n_test"] == n


def test_top_k_is_capped_at_the_number_of_classes():
    proba = _onehotish(np.array([0, 1, 2]), 3, np.array([0.9, 0.9, 0.9]))
    assert evaluate.score(proba, np.array([2, 0, 1]), ["a", "b", "c"], 10)["top5_accuracy"] == 1.0


def test_params_hash_ignores_the_evaluate_section_only():
    a = params.parse({})
    assert evaluate.params_hash(a) == evaluate.params_hash(params.parse({"evaluate": {"ece_bins": 5}}))
    assert evaluate.params_hash(a) != evaluate.params_hash(params.parse({"train": {"epochs": 2}}))


def test_ledger_warns_past_the_maximum_number_of_configurations(tmp_path, caplog):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    ledger = tmp_path / "ledger" / "test_ledger.jsonl"
    caplog.set_level(logging.WARNING, logger="pipeline")
    for epochs in [1, 2, 2, 1]:  # two distinct configurations, evaluated four times
        p = params.parse({"train": {"epochs": epochs}, "evaluate": {"max_test_evaluations": 2}})
        assert evaluate.record_test_evaluation(ledger, p, model) <= 2
    assert not caplog.records
    p = params.parse({"train": {"epochs": 3}, "evaluate": {"max_test_evaluations": 2}})
    assert evaluate.record_test_evaluation(ledger, p, model) == 3
    assert "turns the test set into training data" in caplog.text
    rows = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert len(rows) == 5 and {"params_hash", "model_sha256"} <= set(rows[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny split, a params file and a model trained by the train stage."""
    root = tmp_path_factory.mktemp("stage")
    split, assemble, classes = write_split(root)
    params_file = root / "params.yaml"
    params_file.write_text(
        yaml.safe_dump(
            {
                "train": {"epochs": 4, "batch_size": 32, "width": 8, "lr": 0.01, "threads": 1},
                "evaluate": {"max_test_evaluations": 1, "ece_bins": 10},
            }
        )
    )
    rc = cli.main(
        [
            "train",
            "--params",
            str(params_file),
            "--quiet",
            "--assemble",
            str(assemble),
            "--oof",
            str(root / "no-oof"),  # read only for train.soft_labels
            "--policy",
            RANDAUGMENT,
            "--unlabeled-policy",
            RANDAUGMENT,
            "--split",
            str(split),
            "--model",
            str(root / "model.pt"),
            "--metrics",
            str(root / "train.json"),
            "--plots",
            str(root / "plots_train"),
        ]
    )
    assert rc == 0
    return root, split, classes


def _evaluate(root, split, tag):
    return cli.main(
        [
            "evaluate",
            "--params",
            str(root / "params.yaml"),
            "--quiet",
            "--model",
            str(root / "model.pt"),
            "--split",
            str(split),
            "--metrics",
            str(root / f"{tag}.json"),
            "--plots",
            str(root / f"plots_{tag}"),
            "--ledger",
            str(root / "ledger.jsonl"),
        ]
    )


def test_evaluate_stage_writes_metrics_and_confusion_reproducibly(trained, caplog):
    root, split, classes = trained
    assert _evaluate(root, split, "first") == 0
    assert _evaluate(root, split, "second") == 0
    m = json.loads((root / "first.json").read_text())
    assert set(m) == {
        "accuracy",
        "accuracy_ci95",
        "top5_accuracy",
        "macro_f1",
        "per_class",
        "ece",
        "n_test",
        "nll",
        "robustness",
        "temperature",
    }
    assert set(m["temperature"]) == {"t", "fitted", "fitted_on", "ece", "nll"} and m["temperature"]["t"] > 0
    if m["temperature"]["fitted"]:  # fitted on val, so test NLL need not fall, but it does here unless T = 1
        assert m["temperature"]["nll"] <= m["nll"] + 0.05
    assert set(m["per_class"]) == set(classes) and m["n_test"] == 48
    assert m["accuracy"] >= 0.8
    assert (root / "first.json").read_bytes() == (root / "second.json").read_bytes()
    confusion = pd.read_csv(root / "plots_first" / "confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == 48
    assert set(confusion["actual"]) <= set(classes)
    assert len((root / "ledger.jsonl").read_text().splitlines()) == 2


def test_evaluate_refuses_a_model_trained_on_other_classes(trained, tmp_path, capsys):
    root, _, _ = trained
    other, _, _ = write_split(tmp_path, k=3)
    assert _evaluate(root, other, "other") == 2
    assert "trained on classes" in capsys.readouterr().err


def test_accuracy_interval_is_exact_binomial_and_narrows_with_n():
    lo, hi = evaluate.accuracy_interval(18, 24)  # 0.75 on 24 test images says little
    assert lo == pytest.approx(0.5329, abs=1e-4) and hi == pytest.approx(0.9023, abs=1e-4)
    lo, hi = evaluate.accuracy_interval(9000, 10000)
    assert hi - lo < 0.013 and lo < 0.9 < hi
    assert evaluate.accuracy_interval(0, 0) == (0.0, 1.0)
