"""The metric keys read across modules have one list (pipeline/core/metric_keys.py): reading one
not listed fails, the report's figures are all listed, and data_health.json has exactly its keys.
(tests/test_e2e_dvc.py holds a real run's metrics to the list.)"""

import argparse

import pytest

from pipeline.core import metric_keys
from pipeline.core.errors import PipelineError
from pipeline.stages import report


def test_a_key_read_but_not_listed_fails_naming_the_file_and_the_list():
    m = metric_keys.Metrics("evaluate", {"accuracy": 0.9, "secret": 1})
    assert m["accuracy"] == 0.9 and m.get("ece") is None
    with pytest.raises(PipelineError, match=r"metrics/evaluate.json: 'secret' is read but not listed .*READ"):
        m["secret"]
    with pytest.raises(PipelineError, match="'secret'"):
        m.get("secret")


@pytest.mark.parametrize("stage", sorted(report.KEY_FIGURES))
def test_the_reports_key_figures_are_listed(stage):
    stem = stage.replace("-", "_")
    for _, path in report.KEY_FIGURES[stage]:
        metric_keys.check(stem, path.split(".")[0] if isinstance(path, str) else path[0])


def test_data_health_has_exactly_the_listed_keys(tmp_path):
    args = argparse.Namespace(labels=str(tmp_path / "patches.csv"))
    health = report.health(report.Inputs(None, args, {}, {}))
    assert set(health) == set(metric_keys.DATA_HEALTH)
    assert all(v in (None, 0, {}) for v in health.values())  # nothing measured: nothing made up
