import json
import typing
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from fit_util import write_split

from pipeline import __main__ as cli
from pipeline.core import dataset, params
from pipeline.core.errors import PipelineError
from pipeline.stages import assemble
from pipeline.stages import synthesize as stage
from pipeline.synthesize import gate, generators

TINY_TRAIN = {"epochs": 4, "batch_size": 32, "width": 8, "lr": 0.01, "threads": 1}
TINY_SYNTH = {
    "per_class": 12,
    "vae": {"epochs": 40, "batch_size": 16, "width": 8, "kl_warmup_epochs": 5},
    "gan": {"epochs": 40, "batch_size": 16, "width": 8},
    "gate": {"tstr_epochs": 5},
}


def _raw(**synthesize) -> dict:
    return {
        "train": TINY_TRAIN,
        "oof": {"folds": 2, "epochs": 6, "min_steps": 0},
        "synthesize": {**TINY_SYNTH, **synthesize},
    }


def _params(**synthesize) -> params.Params:
    return params.parse(_raw(**synthesize))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny split (4 quadrant classes, 8x8) and its oof output (the judges)."""
    root = tmp_path_factory.mktemp("synth")
    split, _, _ = write_split(root, n=320)
    (root / "params.yaml").write_text(yaml.safe_dump(_raw()))
    assert (
        cli.main(
            [
                "oof",
                "--quiet",
                "--params",
                str(root / "params.yaml"),
                "--split",
                str(split),
                "--embed",
                "none",  # read only by oof.model: probe
                "--labels",
                str(root / "patches.csv"),  # none: an empty patch
                "--out",
                str(root / "oof"),
                "--metrics",
                str(root / "oof.json"),
            ]
        )
        == 0
    )
    return root


def _stage(project, out, **synthesize):
    cfg = out / "params.yaml"
    out.mkdir(parents=True, exist_ok=True)
    cfg.write_text(yaml.safe_dump(_raw(**synthesize)))
    rc = cli.main(
        [
            "synthesize",
            "--quiet",
            "--params",
            str(cfg),
            "--clean",
            str(project / "split"),
            "--oof",
            str(project / "oof"),
            "--out",
            str(out / "syn"),
            "--metrics",
            str(out / "syn.json"),
            "--plots",
            str(out / "plots"),
        ]
    )
    assert rc == 0
    df, _ = dataset.read_manifest(out / "syn")
    return df, pd.read_csv(out / "syn" / stage.REJECTED_FILE), json.loads((out / "syn.json").read_text())


@pytest.fixture(scope="module")
def vae_run(project, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    return (*_stage(project, out), out)


def test_stage_writes_admitted_samples_with_the_contract_columns(project, vae_run):
    df, rejected, metrics, out = vae_run
    assert metrics["verdict"] == "admitted" and len(df) == metrics["admitted"] > 0
    assert {"sample_id", "origin", "split", "label", "generator"} <= set(df)
    assert (df["origin"] == "synthetic").all() and (df["split"] == "train").all()
    assert (df["generator"] == "vae").all() and df["parent_id"].isna().all() and df["sample_id"].is_unique
    assert metrics["generated"] == 4 * 12 and len(df) + len(rejected) == metrics["drawn"] >= 48
    assert (rejected["reason"] != "").all() and sum(metrics["admitted_per_class"].values()) == len(df)
    assert df.groupby("label").size().max() <= 12  # at most the target per class
    px = dataset.load_pixels(df)
    assert px.shape[1:] == (8, 8, 1) and list(df["pixel_sha256"]) == [dataset.pixel_hash(p) for p in px]
    assert (df["p_label"] >= 0.5).all()  # the default tau
    q = metrics["quality"]
    assert {"fid", "kid", "precision", "recall"} <= set(q["generated"])
    assert set(q["per_class"]) == {"c0", "c1", "c2", "c3"}
    assert 0 <= metrics["tstr_val_accuracy"] <= 1
    assert (out / "plots" / "samples.png").exists() and (out / "plots" / "interpolation.png").exists()
    gen, classes = generators.load(out / "syn" / stage.GENERATOR_FILE)
    assert gen.name == "vae" and classes == ["c0", "c1", "c2", "c3"] and gen.fingerprint() == df["model_id"].iloc[0]


def test_assemble_admits_the_synthetic_manifest(project, vae_run):
    df = vae_run[0]
    split_df, _ = dataset.read_manifest(project / "split")
    assemble.check_lineage(split_df, df, "synthesize")
    out, m = assemble.combine(split_df, {"synthesize": df}, 1.0)
    assert m["by_origin"]["synthetic"] == len(df) and (out["origin"] == "synthetic").sum() == len(df)


def test_stage_is_deterministic(project, vae_run, tmp_path):
    a = vae_run[3] / "syn"
    _stage(project, tmp_path)
    b = tmp_path / "syn"
    for name in ["manifest.parquet", "rejected.csv", "generator.pt", "images/00000.npy"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("name", sorted(generators.GENERATORS))
def test_untrained_generator_is_rejected(project, tmp_path, name):
    df, rejected, metrics = _stage(project, tmp_path, generator=name, **{name: {"epochs": 0, "width": 8}})
    assert metrics["verdict"] == "rejected" and metrics["admitted"] == 0 and len(df) == 0
    assert "below gate.min_admitted" in metrics["verdict_reason"]
    assert len(rejected) == metrics["drawn"] == metrics["generated"] == 48  # no second draw for a rejected generator
    assert metrics["quality"]["generated"]["fid"] > 10 * metrics["quality"]["real_baseline"]["fid"]


class CopyGenerator(generators.Generator):
    """Test-only plug-in that 'generates' its training images, with +-`noise` grey levels."""

    name = "copy"

    def __init__(self, noise: int, seed: int = 0):
        knobs = SimpleNamespace(latent_dim=2, temperature=1.0, model_dump=lambda: {"noise": noise})
        self.noise = noise
        super().__init__(knobs, (8, 8, 1), 4, seed)

    def build(self):
        return {}

    def fit(self, x, y):
        self.x, self.y = x, np.asarray(y)
        return []

    def decode(self, z, labels, batch_size=512):
        out = []
        for zi, c in zip(z, labels):
            pool = np.flatnonzero(self.y == c)
            rng = np.random.default_rng(int(abs(zi[0]) * 1e6))
            px = self.x[pool[rng.integers(len(pool))]].astype(int)
            out.append(np.clip(px + rng.integers(-self.noise, self.noise + 1, px.shape), 0, 255))
        return np.array(out, np.uint8)


@pytest.mark.parametrize("noise", [0, 2])
def test_a_generator_that_copies_train_images_is_rejected(project, tmp_path, noise):
    split_df, classes = dataset.read_manifest(project / "split")
    df, _, rejected, metrics, _, _ = stage.run(_params(), split_df, classes, project / "oof", gen=CopyGenerator(noise))
    assert metrics["verdict"] == "rejected" and len(df) == 0
    assert rejected["reason"].str.contains("copies_train").all()
    assert metrics["rejected_by_reason"]["copies_train"] == 48


@pytest.fixture(scope="module")
def reference(project):
    split_df, classes = dataset.read_manifest(project / "split")
    judges, ref, train = stage.judges_and_reference(split_df, project / "oof")
    return split_df, judges, ref, gate.thresholds(ref, _params().synthesize.gate, 0)


def _assess(reference, pixels, labels):
    _, judges, ref, th = reference
    hashes = [dataset.pixel_hash(p) for p in pixels]
    return gate.assess(ref, th, gate.features(judges, pixels), gate.judge_probs(judges, pixels), labels, hashes, 0.5)


def test_gate_rejects_planted_copies_of_val_and_test_images_always(reference):
    split_df = reference[0]
    held = split_df[split_df["split"].isin(["val", "test"])]
    px = dataset.load_pixels(held)
    noisy = np.clip(px.astype(int) + np.random.default_rng(0).integers(-2, 3, px.shape), 0, 255).astype(np.uint8)
    for planted in (px, noisy):
        scores = _assess(reference, planted, held["label_id"].to_numpy())
        assert scores["reason"].str.startswith("copies_val_test").all()
    # the holdout check cannot be switched off, the train check can
    with pytest.raises(PipelineError, match="holdout_quantile"):
        params.parse({"synthesize": {"gate": {"holdout_quantile": 0}}})
    assert params.parse({"synthesize": {"gate": {"copy_quantile": 0}}}).synthesize.gate.copy_quantile == 0


def test_gate_flags_copies_of_train_images_and_off_label_samples(reference):
    split_df = reference[0]
    train = split_df[split_df["split"] == "train"]
    px, y = dataset.load_pixels(train), train["label_id"].to_numpy()
    assert _assess(reference, px, y)["reason"].str.contains("copies_train").all()
    wrong = _assess(reference, px, (y + 1) % 4)["reason"]  # real train images, wrong conditioning label
    assert wrong.str.contains("off_label").mean() > 0.9


def test_gate_thresholds_come_from_real_data(reference):
    _, judges, ref, th = reference
    assert 0 < th.copy_val_test == th.copy_train  # both the 1st percentile of train NN distances
    # real val images are mostly admitted: a genuine new sample is not a copy nor off the manifold
    probs, blank = np.eye(4)[ref.val_labels], [""] * len(ref.val)
    val_scores = gate.assess(ref, th, ref.val, probs, ref.val_labels, blank, 0.5)
    assert val_scores["reason"].str.startswith("copies_val_test").all()  # they are the val images themselves
    val_as_new = gate.Reference(ref.train, ref.train_labels, set(), ref.holdout[:0], set(), ref.val, ref.val_labels)
    reasons = gate.assess(val_as_new, th, ref.val, probs, ref.val_labels, blank, 0.5)["reason"]
    assert (reasons == "").mean() >= 0.85


def test_features_are_the_oof_embeddings(project, reference):
    split_df, judges, ref, _ = reference
    train = split_df[split_df["split"] == "train"]
    assert np.allclose(gate.features(judges, dataset.load_pixels(train)), ref.train, atol=1e-5)


def test_missing_judges_fail_naming_the_folder(project, tmp_path):
    split_df, classes = dataset.read_manifest(project / "split")
    with pytest.raises(PipelineError, match="no fold models"):
        stage.run(_params(), split_df, classes, tmp_path / "oof")


def test_disabled_stage_writes_an_empty_valid_manifest(project, tmp_path):
    df, rejected, metrics = _stage(project, tmp_path, enabled=False)
    assert len(df) == 0 and metrics == {"enabled": False} and set(stage.COLUMNS) == set(df)
    assert list(rejected.columns) == stage.REJECTED_COLUMNS


def _gauss(n, d=8, shift=0.0, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)) + shift


def test_fid_is_zero_on_the_same_set_and_grows_with_a_shift():
    a = _gauss(2000)
    assert gate.fid(a, a) < 1e-6
    shifts = [gate.fid(a, _gauss(2000, shift=s, seed=1)) for s in (0.0, 0.5, 1.0)]
    assert shifts[0] < 0.05 and shifts[0] < shifts[1] < shifts[2]
    assert abs(shifts[2] - 8.0) < 0.5  # |mu1 - mu2|^2 = 8 * 1^2, equal covariances
    assert gate.fid(a[:1], a) is None


def test_kid_is_unbiased_near_zero_on_one_distribution_and_positive_apart():
    same = gate.kid(_gauss(1000), _gauss(1000, seed=1), subsets=10, subset_size=500)
    apart = gate.kid(_gauss(1000), _gauss(1000, shift=1.0, seed=1), subsets=10, subset_size=500)
    assert abs(same) < 0.01 < apart


def test_precision_recall_on_identical_and_disjoint_sets():
    a = _gauss(500)
    assert gate.precision_recall(a, a.copy(), k=3) == (1.0, 1.0)
    assert gate.precision_recall(a, _gauss(500, shift=100.0, seed=1), k=3) == (0.0, 0.0)
    p, r = gate.precision_recall(a, a[:, :] * 0.01, k=3)  # a collapsed generator: precise, no recall
    assert p > 0.9 and r < 0.1
    assert gate.precision_recall(a[:3], a, k=3) == (None, None)


def test_rejected_samples_are_replaced_up_to_max_draws():
    targets, drawn = np.array([10, 10, 10]), np.array([10, 10, 10])
    more = stage._more(targets, drawn, passed=np.array([10, 5, 0]), max_draws=4)
    assert list(more) == [0, 11, 30]  # full; the shortfall at its pass rate (+10%); the rest of the cap
    assert list(stage._more(targets, drawn * 4, np.array([10, 5, 0]), max_draws=4)) == [0, 0, 0]


def test_balance_tops_up_minority_classes():
    y = np.array([0] * 10 + [1] * 4 + [2] * 7)
    assert list(stage.counts(y, 3, 5, balance=False)) == [5, 5, 5]
    assert list(stage.counts(y, 3, 5, balance=True)) == [0, 6, 3]


def test_every_generator_has_its_params_section_and_a_test():
    names = set(typing.get_args(params.Synthesize.model_fields["generator"].annotation))
    assert names == set(generators.GENERATORS)
    for name, cls in generators.GENERATORS.items():
        assert cls.Knobs is type(getattr(params.Synthesize(), name))
    with pytest.raises(PipelineError, match=r"synthesize\.generator: expected .*'vae'.*got 'flow'"):
        params.parse({"synthesize": {"generator": "flow"}})
    with pytest.raises(
        PipelineError, match=r"unknown generator \(synthesize.generator\) 'flow'; must be one of vae, gan"
    ):
        generators.get("flow")


@pytest.mark.parametrize("name", sorted(generators.GENERATORS))
def test_generators_train_deterministically_on_8_and_28_px(name):
    from fit_util import patterns

    for size in (8, 28):
        x, y = patterns(64, size=size)
        knobs = getattr(params.Synthesize(), name).model_copy(update={"epochs": 2, "width": 4, "batch_size": 16})
        a, b = (generators.build(name, knobs, x.shape[1:], 4, seed=3) for _ in range(2))
        a.fit(x, y), b.fit(x, y)
        assert a.fingerprint() == b.fingerprint()
        z = np.random.default_rng(0).standard_normal((5, a.latent_dim)).astype(np.float32)
        out = a.decode(z, np.arange(5) % 4)
        assert out.dtype == np.uint8 and out.shape == (5, size, size, 1)
        assert np.array_equal(out[:2], a.decode(z[:2], np.arange(2)))  # a sample does not depend on its batch
    with pytest.raises(PipelineError, match="divisible by 4"):
        generators.build(name, knobs, (10, 10, 1), 4, seed=0)


def test_vae_mixture_prior_samples_where_the_posterior_means_are(tmp_path):
    from fit_util import patterns

    x, y = patterns(96, size=8)
    knobs = params.SynthVae(epochs=2, width=4, batch_size=16, prior="mixture", mixture_components=3)
    gen = generators.build("vae", knobs, x.shape[1:], 4, seed=3)
    gen.fit(x, y)
    mix = gen.networks["mixture"]
    assert np.allclose(mix.weights.sum(1).numpy(), 1.0) and (mix.weights > 0).sum(1).min() == 3
    seeds, labels = list(range(400)), np.arange(400) % 4
    z = gen.latents(seeds, labels)
    assert np.array_equal(z[:7], gen.latents(seeds[:7], labels[:7]))  # a code depends on its seed only
    mu = gen.encode(x, y)
    for c in range(4):  # the codes follow the class's posterior means, not N(0, I)
        assert np.abs(z[labels == c].mean(0) - mu[y == c].mean(0)).max() < 0.5 * mu[y == c].std(0).max() + 0.1
    generators.save(tmp_path / "g.pt", gen, list("abcd"), [])
    loaded, _ = generators.load(tmp_path / "g.pt")
    assert loaded.fingerprint() == gen.fingerprint() and np.array_equal(loaded.latents(seeds, labels), z)
    assert not np.allclose(
        z,
        generators.build("vae", knobs.model_copy(update={"prior": "normal"}), x.shape[1:], 4, seed=3).latents(
            seeds, labels
        ),
    )


def test_vae_pixel_temperature_sharpens_without_moving_a_pixel_across_the_middle():
    from fit_util import patterns

    x, y = patterns(64, size=8)
    knobs = params.SynthVae(epochs=1, width=4, batch_size=16)
    a = generators.build("vae", knobs, x.shape[1:], 4, seed=0)
    a.fit(x, y)
    b = generators.build("vae", knobs.model_copy(update={"pixel_temperature": 0.5}), x.shape[1:], 4, seed=0)
    b.fit(x, y)
    z, labels = a.latents(list(range(8)), np.arange(8) % 4), np.arange(8) % 4
    mean, sharp = (g.decode(z, labels).astype(int) - 127.5 for g in (a, b))
    assert np.array_equal(np.sign(mean), np.sign(sharp)) and (np.abs(sharp) >= np.abs(mean)).all()
    assert (np.abs(sharp) > np.abs(mean)).mean() > 0.5
