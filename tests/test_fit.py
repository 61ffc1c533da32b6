import pickle

import numpy as np
import pytest
import torch
from fit_util import patterns

from pipeline.core import params
from pipeline.core.errors import PipelineError
from pipeline.learn import checkpoints, fit, inference, models, tensors

CFG = params.Train(epochs=6, batch_size=32, width=8, lr=1e-2, threads=1)


def _split(n=240, **kw):
    x, y = patterns(n, **kw)
    return x[:160], y[:160], x[160:], y[160:]


def _accuracy(model, x, y):
    return float((inference.predict_proba(model, x).argmax(1) == y).mean())


def test_learns_a_pattern_and_reports_each_epoch():
    xt, yt, xv, yv = _split()
    r = fit.fit(fit.Inputs(xt, yt, xv, yv, 4), CFG, 0)
    assert _accuracy(r.model, xv, yv) >= 0.9
    assert [h["epoch"] for h in r.history] == list(range(1, len(r.history) + 1))
    assert set(r.history[0]) == {"epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy"}
    assert r.config["model"] == "small_cnn" and r.config["num_classes"] == 4


def test_same_inputs_and_seed_give_a_bitwise_identical_model_whatever_the_global_rng():
    xt, yt, xv, yv = _split()
    cfg = CFG.model_copy(update={"epochs": 2})
    torch.manual_seed(1)
    np.random.seed(1)
    a = fit.fit(fit.Inputs(xt, yt, xv, yv, 4), cfg, 5).model.state_dict()
    torch.manual_seed(2)
    torch.rand(10)
    np.random.seed(2)
    b = fit.fit(fit.Inputs(xt, yt, xv, yv, 4), cfg, 5).model.state_dict()
    c = fit.fit(fit.Inputs(xt, yt, xv, yv, 4), cfg, 6).model.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_early_stopping_restores_the_latest_epoch_within_noise_of_the_best():
    # Val labels are the train rule shifted by one class: the better the model learns
    # train, the worse its val loss, so the best epoch is early and training stops.
    xt, yt, xv, yv = _split()
    xv8, yv_t = tensors.to_tensor(xv), torch.from_numpy((yv + 1) % 4)
    per_epoch = []
    cfg = CFG.model_copy(update={"epochs": 20, "patience": 2})
    record = lambda model, epoch: per_epoch.append(fit.val_losses(model, xv8, yv_t)[0])  # noqa: E731
    r = fit.fit(fit.Inputs(xt, yt, xv, (yv + 1) % 4, 4), cfg, 0, on_epoch_end=record)
    assert len(r.history) < 20
    kept = 0
    for e, losses in enumerate(per_epoch, 1):
        best = min(per_epoch[:e], key=lambda v: float(v.mean()))
        kept = e if fit.within_noise(losses, best) else kept
    assert r.best_epoch == kept < len(r.history)
    got, _ = fit.evaluate_loss(r.model, xv8, yv_t)
    assert got == pytest.approx(r.history[kept - 1]["val_loss"], abs=1e-5)
    assert got < r.history[-1]["val_loss"]


def test_within_noise_is_a_paired_one_standard_error_rule():
    best = torch.linspace(0.1, 2.0, 100, dtype=torch.float64)
    assert fit.within_noise(best, best)
    assert not fit.within_noise(best + 0.01, best)  # uniformly worse: the difference has no noise
    wobble = torch.tensor([0.5, -0.5] * 50, dtype=torch.float64)
    assert fit.within_noise(best + wobble + 0.04, best)  # mean 0.04 < SE 0.05
    assert not fit.within_noise(best + wobble + 0.06, best)
    assert fit.within_noise(best - 0.3, best)  # better is within


def test_without_val_it_trains_all_epochs():
    xt, yt, xv, _ = _split()
    r = fit.fit(fit.Inputs(xt, yt, xv[:0], np.zeros(0, np.int64), 4), CFG.model_copy(update={"epochs": 3}), 0)
    assert len(r.history) == 3 and r.best_epoch == 3
    assert r.history[-1]["val_loss"] is None


def test_a_zero_sample_weight_removes_a_class():
    xt, yt, xv, yv = _split(n=400)
    weight = np.where(yt == 0, 0.0, 1.0)
    r = fit.fit(fit.Inputs(xt, yt, xv, yv, 4, sample_weight=weight), CFG.model_copy(update={"label_smoothing": 0.0}), 0)
    pred = inference.predict_proba(r.model, xv).argmax(1)
    assert (pred[yv == 0] == 0).mean() < 0.5
    assert (pred[yv != 0] == yv[yv != 0]).mean() > 0.9


def test_class_weights_are_inverse_frequency_with_mean_one():
    y = np.array([0, 0, 0, 1])
    w = fit.class_weights(y, 3)
    assert w == pytest.approx([4 / 6, 2.0, 0.0])
    assert w[y].mean() == pytest.approx(1.0)


def test_lr_warms_up_linearly_then_decays_to_zero():
    lrs = [fit.lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] < 1e-3


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_no_weight_decay_on_norm_and_bias_parameters(optimizer):
    model = models.build_model("resnet", 1, 3, 8)
    opt = fit.make_optimizer(model, CFG.model_copy(update={"optimizer": optimizer}))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim > 1), name


def test_predict_proba_and_embed_shapes(tmp_path):
    x, y = patterns(20, size=10, channels=3)
    model = models.build_model("resnet", 3, 4, 8)
    p = inference.predict_proba(model, x, batch_size=7)
    assert p.dtype == np.float32 and p.shape == (20, 4)
    assert np.allclose(p.sum(1), 1, atol=1e-5)
    e = inference.embed(model, x, batch_size=7)
    assert e.dtype == np.float32 and e.shape == (20, model.embed_dim)
    assert inference.predict_proba(model, x[:0]).shape == (0, 4)


def test_save_load_round_trip_is_byte_stable(tmp_path):
    xt, yt, xv, yv = _split()
    r = fit.fit(fit.Inputs(xt, yt, xv, yv, 4), CFG.model_copy(update={"epochs": 1}), 0)
    checkpoints.save_model(tmp_path / "a.pt", r.model, r.config, ["a", "b", "c", "d"])
    checkpoints.save_model(tmp_path / "sub" / "b.pt", r.model, r.config, ["a", "b", "c", "d"])
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "sub" / "b.pt").read_bytes()
    model, config, classes = checkpoints.load_model(tmp_path / "a.pt")
    assert classes == ["a", "b", "c", "d"] and config == r.config
    assert np.array_equal(inference.predict_proba(model, xv), inference.predict_proba(r.model, xv))
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


class _Payload:
    pass


def test_load_refuses_pickled_objects(tmp_path):
    torch.save({"format_version": checkpoints.FORMAT_VERSION, "config": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        checkpoints.load_model(tmp_path / "evil.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(PipelineError, match="not a pipeline model file"):
        checkpoints.load_model(tmp_path / "other.pt")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"x_train": np.zeros((0, 8, 8, 1), np.uint8), "y_train": np.zeros(0, np.int64)}, "training set is empty"),
        ({"y_train": np.full(160, 9)}, r"expected labels in \[0, 4\)"),
        ({"x_train": np.zeros((160, 8, 8, 1), np.float32)}, "expected uint8 images"),
        ({"y_train": np.zeros(3, np.int64)}, "one label per image"),
    ],
)
def test_bad_inputs_fail_clearly(kwargs, match):
    xt, yt, xv, yv = _split()
    args = {"x_train": xt, "y_train": yt, "x_val": xv, "y_val": yv} | kwargs
    with pytest.raises(PipelineError, match=match):
        fit.fit(fit.Inputs(**args, num_classes=4), CFG, seed=0)


def test_digits_with_the_default_recipe():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = np.round(d.images * 255 / 16).astype(np.uint8)[..., None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    tr, va, te = order[:1257], order[1257:1437], order[1437:]
    cfg = params.Train().model_copy(update={"epochs": 8, "threads": 1})  # the default recipe, shortened
    r = fit.fit(fit.Inputs(x[tr], y[tr], x[va], y[va], 10), cfg, 0)
    assert _accuracy(r.model, x[te], y[te]) >= 0.93


def test_inference_batches_adapt_to_the_image_size_and_do_not_change_predictions():
    assert [inference.inference_batch(s) for s in [(8, 8), (28, 28), (64, 64), (224, 224)]] == [1024, 128, 32, 16]
    x, y = patterns(300, 8, 1)
    cfg = params.Train(epochs=1, batch_size=32, width=8, threads=1)
    model = fit.fit(fit.Inputs(x, y, x[:0], y[:0], 4), cfg, 0).model
    assert np.allclose(inference.predict_proba(model, x), inference.predict_proba(model, x, batch_size=7), atol=1e-6)
