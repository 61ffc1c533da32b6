from pathlib import Path

import pytest
import yaml

from pipeline.core import params
from pipeline.core.errors import PipelineError

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_file_is_valid():
    p = params.load("params.yaml")
    assert p.ingest.source == "digits"
    assert set(p.split.fractions) == {"train", "val", "test"}


def test_defaults_when_sections_are_missing():
    assert params.parse({}).base.seed == 0


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"ingest": {"sorce": "digits"}}, r"ingest\.sorce: unknown key"),
        ({"trian": {}}, r"trian: unknown key"),
        ({"ingest": {"channels": 2}}, r"ingest\.channels: expected .*1.*3.*got 2"),
        ({"train": {"epochs": 0}}, r"train\.epochs: expected greater than or equal to 1, got 0"),
        ({"split": {"fractions": {"train": 0.5, "val": 0.1, "test": 0.1}}}, r"expected fractions summing to 1"),
        ({"split": {"fractions": {"train": 0.9, "test": 0.1}}}, r"expected keys train, val, test"),
        ({"ingest": {"classes": ["a", "b", "a"]}}, r"ingest\.classes: expected distinct class names"),
        ({"ingest": {"source": "webcam"}}, r"ingest\.source: expected .*digits.*got 'webcam'"),
    ],
)
def test_bad_params_fail_with_one_line_naming_the_key(raw, match):
    with pytest.raises(PipelineError, match=match) as e:
        params.parse(raw)
    assert "\n" not in str(e.value)


def test_load_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(PipelineError, match="no such params file"):
        params.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest: [unclosed\n")
    with pytest.raises(PipelineError, match="not valid YAML"):
        params.load(bad)


def test_every_section_in_params_yaml_is_a_model_field():
    raw = yaml.safe_load(open("params.yaml"))
    assert set(raw) <= set(params.Params.model_fields)


def test_params_yaml_holds_every_knob():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params.missing_keys(raw, params.load(ROOT / "params.yaml")) == []


def test_a_knob_left_to_a_code_default_is_found():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    del raw["split"]["near_duplicates"]["radius"], raw["lr_find"]  # planted: two code-only defaults
    assert params.missing_keys(raw, params.parse(raw)) == ["split.near_duplicates.radius", "lr_find"]


def test_params_command_prints_params_yaml(capsys):
    from pipeline.__main__ import main

    assert main(["params", "--params", str(ROOT / "params.yaml")]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load((ROOT / "params.yaml").read_text())
