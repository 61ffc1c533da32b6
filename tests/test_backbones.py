"""Backbones (pipeline/learn/backbones.py), the embed stage, oof's linear probe and pretrain: real timm
models loading checkpoint files these tests write (no network), through the path a user's file takes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from pipeline import __main__ as cli
from pipeline.core import artifacts, dataset, params
from pipeline.core.errors import PipelineError
from pipeline.learn import backbones, checkpoints, runtime
from pipeline.stages import embed, ingest, oof

ARCH = "resnet18"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits ingested (1,797 grey 8x8 images) and a random-init timm resnet18 written as
    safetensors and as a torch .pth state dict, in timm's key names."""
    import timm
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("digits")
    out = root / "ingest"
    ingest.write(params.parse({}), out)
    torch.manual_seed(0)
    net = timm.create_model(ARCH, num_classes=1000)
    save_file(net.state_dict(), root / "r18.safetensors")
    torch.save(net.state_dict(), root / "r18.pth")
    return root, dataset.read_manifest(out)[0]


def backbone(weights, **extra) -> params.Params:
    cfg = {"name": f"timm:{ARCH}", "weights": str(weights), "image_size": 16, "precision": "fp32"} | extra
    return params.parse({"backbone": cfg})


def test_a_timm_state_dict_loads_through_timms_path_from_either_format(digits):
    root, df = digits
    some = df.head(40)
    a, metrics = embed.run(backbone(root / "r18.safetensors"), some, 1)
    b, _ = embed.run(backbone(root / "r18.pth"), some, 1)
    assert a.shape == (40, 512) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert metrics["weights"] == "r18.safetensors" and metrics["channels"] == 1 and metrics["image_size"] == 16
    # the weights are really used: other weights, other features
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    save_file(timm.create_model(ARCH, num_classes=1000).state_dict(), root / "other.safetensors")
    c, _ = embed.run(backbone(root / "other.safetensors"), some, 1)
    assert not np.allclose(a, c)


def test_embed_is_deterministic_and_bf16_stays_close(digits):
    root, df = digits
    some = df.head(64)
    a, _ = embed.run(backbone(root / "r18.safetensors"), some, 1)
    assert np.array_equal(a, embed.run(backbone(root / "r18.safetensors"), some, 1)[0])
    b, metrics = embed.run(backbone(root / "r18.safetensors", precision="bf16"), some, 1)
    assert metrics["precision"] == "bf16"
    assert np.abs(a - b).max() <= 0.05 * np.abs(a).max()


def test_weights_that_do_not_fit_fail_on_one_line_naming_the_key(digits, tmp_path):
    import timm
    from safetensors.torch import save_file

    root, df = digits
    torch.manual_seed(0)
    save_file(timm.create_model("resnet34", num_classes=1000).state_dict(), tmp_path / "r34.safetensors")
    state = timm.create_model(ARCH, num_classes=1000).state_dict()
    state["conv1.weight"] = state["conv1.weight"][:32]
    save_file(state, tmp_path / "narrow.safetensors")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    cases = {
        tmp_path / "r34.safetensors": "not a state dict of timm's resnet18: 96 unexpected keys, such as layer1.2.",
        tmp_path
        / "narrow.safetensors": "key conv1.weight has shape [32, 3, 7, 7]; timm's resnet18 expects [64, 3, 7, 7]",
        tmp_path / "junk.pth": "not a checkpoint (safetensors, or a torch state dict)",
        tmp_path / "absent.pth": "no such file",
    }
    for file, message in cases.items():
        with pytest.raises(PipelineError) as e:
            embed.run(backbone(file), df.head(4), 1)
        assert str(e.value).startswith(f"backbone.weights: {file}: ") and message in str(e.value)
        assert "\n" not in str(e.value)
    with pytest.raises(PipelineError, match="timm has no architecture 'resnet1' \\(close names: resnet18"):
        embed.run(params.parse({"backbone": {"name": "timm:resnet1", "weights": str(root / "r18.pth")}}), df, 1)
    with pytest.raises(PipelineError, match="small_cnn loads from a pipeline model file"):
        embed.run(params.parse({"backbone": {"name": "small_cnn", "weights": str(root / "r18.pth")}}), df, 1)


def test_params_name_what_is_missing():
    with pytest.raises(PipelineError, match="backbone.weights: .*expected a checkpoint file or 'hub'"):
        params.parse({"backbone": {"name": "timm:resnet18"}})
    with pytest.raises(PipelineError, match="backbone.name: expected timm:<architecture> or one of small_cnn"):
        params.parse({"backbone": {"name": "resnet18", "weights": "x"}})
    with pytest.raises(PipelineError, match="oof.model: probe fits on the backbone's embeddings"):
        params.parse({"oof": {"model": "probe"}})
    with pytest.raises(PipelineError, match="base.device"):
        params.parse({"base": {"device": "gpu"}})


def test_no_backbone_embeds_nothing_and_says_so(digits, tmp_path):
    _, df = digits
    emb, metrics = embed.run(params.parse({}), df, 1)
    assert emb.shape == (len(df), 0) and metrics == {"backbone": None, "samples": len(df)}
    np.save(tmp_path / artifacts.EMBEDDINGS, emb)
    df[["sample_id"]].to_parquet(tmp_path / artifacts.EMBED_SAMPLES)
    assert artifacts.read_embeddings(tmp_path, df["sample_id"]) is None


def test_devices():
    assert runtime.device("cpu") == torch.device("cpu")
    assert runtime.device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="base.device: cuda:1: torch .* sees no CUDA device"):
            runtime.device("cuda:1")
    assert runtime.bf16("fp32", torch.device("cpu")) is False and runtime.bf16("bf16", torch.device("cpu")) is True


def test_a_ddp_worker_given_cuda_takes_its_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runtime.device("cuda") == torch.device("cuda", 1) == runtime.device("auto")
    assert runtime.device("cuda:0") == torch.device("cuda", 0)  # a device named in full stays as named
    monkeypatch.delenv("LOCAL_RANK")
    assert runtime.device("cuda") == torch.device("cuda")
    with pytest.raises(PipelineError, match="base.device: cuda:2: there are 2 CUDA devices"):
        runtime.device("cuda:2")


def test_fit_on_the_named_cpu_device_is_byte_identical_to_the_default(tmp_path):
    """Every path trains on `device` (fit moves the model; batches follow it): on the CPU, naming it
    changes no byte of the model, its predictions or its attacks."""
    from pipeline.learn import attacks, fit, inference, tensors

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 8, 1), np.uint8)
    y = rng.integers(0, 3, 64)
    cfg = params.parse({"train": {"epochs": 2, "batch_size": 16, "width": 4}}).train
    adv = cfg.adversarial.model_copy(update={"attack": "pgd", "ratio": 0.5, "steps": 2, "eps": 0.1})
    cfg = cfg.model_copy(update={"adversarial": adv})
    paths = []
    for i, dev in enumerate([None, runtime.device("cpu")]):
        result = fit.fit(fit.Inputs(x[:48], y[:48], x[48:], y[48:], 3), cfg, 0, device=dev)
        checkpoints.save_model(tmp_path / f"{i}.pt", result.model, result.config, ["a", "b", "c"])
        paths.append((tmp_path / f"{i}.pt").read_bytes())
        probs = inference.predict_proba(result.model, x)
        xa = attacks.attack_batches(
            result.model, tensors.to_float(x[:8]), torch.tensor(y[:8]), "pgd", attacks.AttackConfig(eps=0.1, steps=2)
        )
        paths.append(probs.tobytes() + xa.numpy().tobytes())
    assert paths[0] == paths[2] and paths[1] == paths[3]


@pytest.fixture(scope="module")
def pretrained(digits):
    """A small_cnn pretrained (python -m pipeline pretrain) on the digits' split, and a split manifest."""
    from pipeline.commands import pretrain

    root, _ = digits
    p = params.parse({"backbone": {"name": "small_cnn", "weights": str(root / "cnn.pt")}, "train": {"epochs": 4}})
    (root / "params.yaml").write_text(yaml.safe_dump({}))
    args = ["split", "--quiet", "--params", str(root / "params.yaml"), "--ingest", str(root / "ingest")]
    args += ["--embed", str(root / "embed")]
    args += ["--out", str(root / "split"), "--metrics", str(root / "split.json"), "--plots", str(root / "plots")]
    assert cli.main(args) == 0
    split_df, classes = dataset.read_manifest(root / "split")
    result, metrics = pretrain.run(p, split_df, classes)
    checkpoints.save_model(root / "cnn.pt", result.model, result.config, classes)
    return root, split_df, classes, p, metrics


def test_pretrain_writes_a_checkpoint_backbone_weights_accepts(pretrained):
    root, split_df, classes, p, metrics = pretrained
    assert metrics["backbone"] == "small_cnn" and metrics["val_accuracy"] > 0.8
    loaded = backbones.load(p.backbone, 1)
    assert loaded.image_size == 8 and loaded.channels == 1 and loaded.weights == "cnn.pt"
    z = backbones.features(loaded, dataset.load_pixels(split_df.head(5)), torch.device("cpu"), False)
    assert z.shape == (5, loaded.model.embed_dim)
    wrong = p.backbone.model_copy(update={"name": "resnet"})
    with pytest.raises(PipelineError, match="a pipeline model file of small_cnn, but backbone.name is resnet"):
        backbones.load(wrong, 1)


def test_the_probe_finds_planted_label_noise_and_its_fold_models_agree(pretrained, tmp_path):
    from cleanlab.filter import find_label_issues

    root, split_df, classes, p, _ = pretrained
    cfg = p.model_dump() | {"oof": {"model": "probe"}, "clean": {"inject_noise": {"rate": 0.1}}}
    cfg["backbone"]["precision"] = "fp32"  # the fold models infer in fp32: the same numbers (bf16: within 0.02)
    probe_params = params.parse(cfg)
    emb, _ = embed.run(probe_params, split_df, 1)
    df, unit, dyn, metrics, models = oof.run(probe_params, split_df, classes, None, emb)
    assert metrics["model"] == "probe" and metrics["oof_accuracy_vs_truth"] > 0.85
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5) and unit.shape == emb.shape
    assert sorted(dyn["epoch"].unique()) == list(range(1, 9))  # the probe's rounds are its dynamics
    rows = np.flatnonzero(df["fold"].to_numpy() >= 0)
    noisy = (df["label_id"] != df["true_label_id"]).to_numpy()[rows]
    probs = np.stack(df["probs"].to_numpy()[rows])
    found = find_label_issues(df["label_id"].to_numpy()[rows], probs)
    recall, precision = (found & noisy).sum() / noisy.sum(), (found & noisy).sum() / max(found.sum(), 1)
    assert recall > 0.7 and precision > 0.5, (recall, precision)
    # a fold model is the backbone with the probe as its head: a pipeline model like a fold CNN
    checkpoints.save_model(tmp_path / "fold0.pt", models[0].model, models[0].config, classes)
    model, config, _ = checkpoints.load_model(tmp_path / "fold0.pt")
    held = np.flatnonzero(df["fold"].to_numpy() == 0)
    from pipeline.learn import inference

    again = inference.predict_proba(model, dataset.load_pixels(df.iloc[held]))
    assert np.abs(again - np.stack(df["probs"].to_numpy()[held])).max() < 1e-3
    assert config["model"] == "small_cnn" and config["num_classes"] == len(classes)


def test_embed_cli_writes_features_in_manifest_order(digits, tmp_path):
    root, df = digits
    cfg = {"backbone": {"name": f"timm:{ARCH}", "weights": str(root / "r18.safetensors"), "image_size": 16}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    args = ["embed", "--quiet", "--params", str(tmp_path / "params.yaml"), "--ingest", str(root / "ingest")]
    assert cli.main([*args, "--out", str(tmp_path / "embed"), "--metrics", str(tmp_path / "embed.json")]) == 0
    metrics = json.loads((tmp_path / "embed.json").read_text())
    assert metrics["samples"] == len(df) and metrics["dim"] == 512
    ids = df["sample_id"].to_numpy()[::-1][:10]
    z = artifacts.read_embeddings(tmp_path / "embed", ids)
    full = np.load(tmp_path / "embed" / artifacts.EMBEDDINGS)
    assert np.array_equal(z, full[::-1][:10])
    with pytest.raises(PipelineError, match="no embedding for sample nope"):
        artifacts.read_embeddings(tmp_path / "embed", ["nope"])


def test_fine_tuning_trains_the_head_first_then_the_body_at_a_lower_rate(pretrained):
    from pipeline.learn import fit
    from pipeline.stages import train

    root, split_df, classes, p, _ = pretrained
    tr, va = split_df[split_df["split"] == "train"], split_df[split_df["split"] == "val"]
    x, y = dataset.load_pixels(tr), tr["label_id"].to_numpy()
    base = p.model_copy(update={"train": p.train.model_copy(update={"epochs": 1, "min_steps": 0, "patience": 1})})
    model, width = backbones.for_training(p.backbone, 1, len(classes), torch.Generator().manual_seed(0))
    body = {k: v.clone() for k, v in model.body.state_dict().items()}
    cfg = base.train.model_copy(update={"model": "small_cnn", "width": width})
    one = fit.fit(fit.Inputs(x, y, x[:0], y[:0], len(classes), init=model), cfg, 0)  # epoch 1: the head alone
    assert all(torch.equal(body[k], v) for k, v in one.model.body.state_dict().items())  # BN statistics too
    two = fit.fit(fit.Inputs(x, y, x[:0], y[:0], len(classes), init=model), cfg.model_copy(update={"epochs": 3}), 0)
    assert not all(torch.equal(body[k], v) for k, v in two.model.body.state_dict().items())
    # through the train stage: one epoch from the backbone beats one from scratch on the same data
    tuned = params.parse(base.model_dump() | {"train": base.train.model_dump() | {"init": "backbone"}})
    result, metrics = train.run(tuned, tr, va, classes)
    scratch, scratch_metrics = train.run(base, tr, va, classes)
    assert metrics["val_accuracy"] > scratch_metrics["val_accuracy"] + 0.2, (metrics, scratch_metrics)
    assert result.config["model"] == "small_cnn" and result.config["input_size"] is None
    with pytest.raises(PipelineError, match="train.init: backbone trains from the backbone"):
        params.parse({"train": {"init": "backbone"}})


def test_hub_weights_offline_fail_on_one_line(digits, tmp_path):
    """The path a user's online machine takes (timm fetches the weights), here offline: one line, exit 2."""
    import os
    import subprocess
    import sys

    root, _ = digits
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"backbone": {"name": "timm:resnet18", "weights": "hub"}}))
    cmd = [sys.executable, "-m", "pipeline", "embed", "--quiet", "--params", str(tmp_path / "params.yaml")]
    cmd += ["--ingest", str(root / "ingest"), "--out", str(tmp_path / "embed"), "--metrics", str(tmp_path / "m.json")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # no network here either way: fail at once, not after retries
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        len(errors) == 1
        and "backbone.weights: hub: " in errors[0]
        and "point backbone.weights at a local file" in errors[0]
    )
