"""The augment stage on a tiny split: copies of train samples only, lineage that assemble
accepts, per-sample determinism, an empty valid output when off, the same bytes on 1 or 2 workers."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.__main__ import main as cli
from pipeline.augment import policy as pol
from pipeline.core import dataset, params
from pipeline.stages import assemble
from pipeline.stages import augment as stage

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["a", "b"]


def _split(tmp_path: Path, n_train: int = 10, channels: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    writer = dataset.ShardWriter(tmp_path / "split" / "images", shard_size=7)
    rows = []
    for i, split in enumerate(["train"] * n_train + ["val"] * 3 + ["test"] * 3):
        px = rng.integers(0, 256, (10, 10, channels), dtype=np.uint8)
        store, row = writer.add(px)
        rows.append(
            {
                "sample_id": dataset.sample_id("src", i),
                "path": f"src/{i:04d}",
                "label": CLASSES[i % 2],
                "label_id": i % 2,
                "group": None,
                "split": split,
                "origin": "real",
                "parent_id": None,
                "pixel_sha256": dataset.pixel_hash(px),
                "store": store,
                "row": row,
            }
        )
    writer.close()
    df = pd.DataFrame(rows)
    dataset.write_manifest(df, tmp_path / "split" / dataset.MANIFEST, CLASSES)
    return dataset.read_manifest(tmp_path / "split")[0]


def _params(**augment) -> params.Params:
    return params.parse({"augment": {"workers": 1, **augment}})


def _run(tmp_path, split_df, policy="augment_policies/randaugment.yaml", **augment):
    p = _params(policy=policy, **augment)
    name, policy = pol.load_path(ROOT / p.augment.policy)
    out = tmp_path / "augment"
    with dataset.staged_dir(out) as tmp:
        df, metrics = stage.run(p, split_df, name, policy, dataset.ShardWriter(tmp / "images", out / "images"))
        dataset.write_manifest(df, tmp / dataset.MANIFEST, CLASSES, final_dir=out)
    return dataset.read_manifest(out)[0], metrics


def test_copies_of_train_samples_with_lineage_assemble_accepts(tmp_path):
    split_df = _split(tmp_path)
    df, metrics = _run(tmp_path, split_df, copies=3)
    train = split_df[split_df["split"] == "train"]
    assert len(df) == 3 * len(train) == metrics["augmented"]
    assert (df["origin"] == "augmented").all() and (df["split"] == "train").all()
    assert set(df["parent_id"]) == set(train["sample_id"]) and df["sample_id"].is_unique
    parent = split_df.set_index("sample_id").loc[df["parent_id"]]
    assert (df["label"].to_numpy() == parent["label"].to_numpy()).all()
    assert (df["path"].to_numpy() == parent["path"].to_numpy()).all()
    assert df["sample_id"].iloc[1] == dataset.sample_id(df["parent_id"].iloc[1], "augment", "randaugment", 1)
    assert df["seed"].iloc[1] == stage.copy_seed(0, df["parent_id"].iloc[1], 1)
    ops = json.loads(df["ops"].iloc[0])
    assert len(ops) == 2 and all(o["magnitude"] in (9, None) for o in ops)
    pixels = dataset.load_pixels(df)
    assert [dataset.pixel_hash(p) for p in pixels] == list(df["pixel_sha256"])
    assembled, m = assemble.combine(split_df, {"data/augment": df}, 1.0)  # runs check_lineage
    assert m["by_origin"] == {"augmented": len(df), "real": len(train)}


def test_a_copy_depends_only_on_its_parent_and_seed(tmp_path):
    small, _ = _run(tmp_path / "s", _split(tmp_path / "s", n_train=6))
    big, _ = _run(tmp_path / "b", _split(tmp_path / "b", n_train=9))
    common = big.set_index("sample_id").loc[small["sample_id"], "pixel_sha256"]
    assert list(common) == list(small["pixel_sha256"])


def test_same_bytes_on_one_or_two_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(stage, "CHUNK", 3)
    split_df = _split(tmp_path, n_train=11, channels=3)
    one, _ = _run(tmp_path / "1", split_df, policy="augment_policies/autoaugment-svhn.yaml", copies=2, workers=1)
    two, _ = _run(tmp_path / "2", split_df, policy="augment_policies/autoaugment-svhn.yaml", copies=2, workers=2)
    assert one.drop(columns="store").equals(two.drop(columns="store"))
    assert np.array_equal(dataset.load_pixels(one), dataset.load_pixels(two))


def test_sample_pairing_partners_are_named_by_id(tmp_path):
    split_df = _split(tmp_path)
    raw = {"version": 1, "kind": "randaugment", "num_ops": 1, "magnitude": 10, "ops": ["SamplePairing"]}
    (tmp_path / "pair.yaml").write_text(yaml.safe_dump(raw))
    policy = pol.load(tmp_path / "pair.yaml")
    df, _ = stage.run(_params(), split_df, "pair", policy, dataset.ShardWriter(tmp_path / "o"))
    partners = {json.loads(o)[0]["params"]["partner_id"] for o in df["ops"]}
    assert partners <= set(split_df.loc[split_df["split"] == "train", "sample_id"])


@pytest.mark.parametrize("augment", [{"enabled": False}, {"mode": "online"}])
def test_off_or_online_writes_an_empty_valid_manifest(tmp_path, augment):
    split_df = _split(tmp_path)
    df, metrics = _run(tmp_path, split_df, **augment)
    assert len(df) == 0 and list(df.columns) == stage.COLUMNS and metrics["augmented"] == 0
    out, m = assemble.combine(split_df, {"data/augment": df}, 1.0)
    assert m["total"] == 10


def test_cli_writes_manifest_metrics_and_a_preview_of_its_policy(tmp_path):
    _split(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"augment": {"copies": 2, "workers": 1, "preview": 3}}))
    rc = cli(
        [
            "augment",
            "--quiet",
            "--params",
            str(tmp_path / "params.yaml"),
            "--clean",
            str(tmp_path / "split"),
            "--policy",
            str(ROOT / "augment_policies" / "randaugment.yaml"),
            "--out",
            str(tmp_path / "augment"),
            "--metrics",
            str(tmp_path / "augment.json"),
            "--plots",
            str(tmp_path / "plots"),
        ]
    )
    assert rc == 0
    metrics = json.loads((tmp_path / "augment.json").read_text())
    assert metrics["augmented"] == 20 and metrics["policy"] == "randaugment"
    assert sum(metrics["op_counts"].values()) == 40
    assert [p.name for p in (tmp_path / "plots").glob("*.png")] == ["randaugment.png"]


@pytest.mark.parametrize(
    "policy, says",
    [
        ("augment_policies/nope.yaml", "augment.policy: augment_policies/nope.yaml: no such policy file (the shipped"),
        ("randaugment.yaml", "augment.policy: expected the path of a policy file such as augment_policies/randaug"),
    ],
)
def test_unknown_policy_file_fails_listing_the_valid_ones(tmp_path, capsys, policy, says):
    _split(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"augment": {"policy": policy}}))
    rc = cli(
        [
            "augment",
            "--quiet",
            "--params",
            str(tmp_path / "params.yaml"),
            "--clean",
            str(tmp_path / "split"),
            "--policy",
            str(ROOT / "augment_policies" / "randaugment.yaml"),
            "--out",
            str(tmp_path / "augment"),
            "--metrics",
            str(tmp_path / "m.json"),
            "--plots",
            str(tmp_path / "plots"),
        ]
    )
    assert rc == 2 and not (tmp_path / "augment").exists()
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_num_ops_and_magnitude_params_reach_the_copies_and_the_metrics(tmp_path):
    _split(tmp_path)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"augment": {"workers": 1, "preview": 0, "num_ops": 1, "magnitude": 4}})
    )
    rc = cli(
        [
            "augment",
            "--quiet",
            "--params",
            str(tmp_path / "params.yaml"),
            "--clean",
            str(tmp_path / "split"),
            "--policy",
            str(ROOT / "augment_policies" / "randaugment.yaml"),
            "--out",
            str(tmp_path / "augment"),
            "--metrics",
            str(tmp_path / "augment.json"),
            "--plots",
            str(tmp_path / "plots"),
        ]
    )
    assert rc == 0
    metrics = json.loads((tmp_path / "augment.json").read_text())
    assert (metrics["num_ops"], metrics["magnitude"], sum(metrics["op_counts"].values())) == (1, 4, 10)
    df, _ = dataset.read_manifest(tmp_path / "augment")
    assert all(len(ops) == 1 and ops[0]["magnitude"] in (4, None) for ops in map(json.loads, df["ops"]))


def test_train_online_policy_refuses_an_override_the_policy_cannot_take():
    from pipeline.core.errors import PipelineError
    from pipeline.stages import train

    p = params.parse({"augment": {"mode": "online", "policy": "augment_policies/trivialaugment.yaml", "magnitude": 5}})
    with pytest.raises(PipelineError, match=r"augment\.magnitude: expected null for trivialaugment\.yaml"):
        train.online_policy(p, ROOT / p.augment.policy, 10)
    ok = params.parse({"augment": {"mode": "online", "num_ops": 1, "magnitude": 0}})
    x = np.random.default_rng(0).integers(0, 256, (4, 10, 10, 1), dtype=np.uint8)
    assert train.online_policy(ok, ROOT / ok.augment.policy, 10)(x, list("abcd"), 1).shape == x.shape


def test_auto_mode_augments_online_only_a_small_labeled_set():
    from pipeline.stages import train

    auto = params.parse({})
    assert auto.augment.mode == "auto" and auto.augment.online_below == 4000
    path = ROOT / auto.augment.policy
    assert train.online_policy(auto, path, 3999) is not None
    assert train.online_policy(auto, path, 4000) is None
    assert train.online_policy(params.parse({"augment": {"mode": "offline"}}), path, 10) is None
    assert train.online_policy(params.parse({"augment": {"enabled": False}}), path, 10) is None
