"""Where the per-sample work runs: the local pool and Ray Data give the same results in the same
order; ingest, augment, adversarial generation, oof's fold-model inference and split's
near-duplicate descriptors on a local Ray (2 CPUs) give the same bytes as on the local executor;
with `executor: local` nothing imports ray."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from corpus import make

from pipeline.__main__ import main as cli
from pipeline.core import dataset
from pipeline.core.executor import ordered_map

ROOT = Path(__file__).resolve().parents[1]


def _square_plus(shared: int, x: int) -> int:
    return x * x + shared


def test_the_local_pool_keeps_input_order_and_passes_the_shared_value():
    items = list(range(50))
    want = [x * x + 7 for x in items]
    assert list(ordered_map(_square_plus, items, 7, workers=1)) == want
    assert list(ordered_map(_square_plus, items, 7, workers=2)) == want
    assert list(ordered_map(_square_plus, [], 7, workers=2)) == []


def _stage(name: str, params_file: Path, **flags) -> None:
    argv = [name, "--quiet", "--params", str(params_file), *(str(v) for kv in flags.items() for v in kv)]
    assert cli(argv) == 0


def _ingest_and_augment(tmp_path: Path, images: Path, executor: str) -> Path:
    out = tmp_path / executor
    params = {
        "base": {"executor": executor},
        "ingest": {"source": "imagefolder", "path": str(images), "workers": 2, "shard_size": 64},
        "augment": {"workers": 2, "preview": 0, "copies": 2},
    }
    (out / "params.yaml").parent.mkdir(parents=True)
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    _stage("ingest", out / "params.yaml", **{"--out": out / "ingest", "--metrics": out / "ingest.json"})
    df, classes = dataset.read_manifest(out / "ingest")
    split = df.assign(split=["train" if i % 5 else "val" for i in range(len(df))])  # augment copies train
    dataset.write_manifest(split, out / "split" / dataset.MANIFEST, classes)
    flags = {"--clean": out / "split", "--policy": ROOT / "augment_policies/randaugment.yaml"}
    flags |= {"--out": out / "augment", "--metrics": out / "augment.json", "--plots": out / "plots"}
    _stage("augment", out / "params.yaml", **flags)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _attack(executor: str, pixels, labels):
    import torch

    from pipeline.core import params
    from pipeline.learn import fit
    from pipeline.stages import adversarial

    cfg = params.Adversarial(batch_size=16, steps=3)
    model = fit.new_model(pixels, params.Train(width=8), 5, torch.Generator().manual_seed(0))
    return adversarial.generate(model, pixels, labels, cfg, 0, 5, executor, threads=1)


def _fold_inference(executor: str, pixels):
    """A fold model's plain probabilities, embeddings and TTA probabilities of two row groups."""
    import torch

    from pipeline.core import params
    from pipeline.learn import fit
    from pipeline.stages import oof

    model = fit.new_model(pixels, params.Train(width=8), 5, torch.Generator().manual_seed(0)).eval()
    return oof.infer(model, pixels, [np.arange(0, len(pixels), 3), np.arange(1, 40, 2)], True, executor, threads=1)


def _descriptor_candidates(df: pd.DataFrame, executor: str) -> pd.DataFrame:
    """Near-duplicate candidates (both feature passes) with a radius wide enough to find many."""
    from pipeline.core import params
    from pipeline.dedup import neardup
    from pipeline.stages import split

    cascade = split.detector(params.NearDuplicates(radius=1.5))
    with neardup.one_blas_thread():  # as Cascade.find runs it (the Ray workers always do)
        return cascade.candidates(split.store_images(df, chunk=48, executor=executor))


@pytest.mark.slow
def test_ingest_augment_and_adversarial_on_a_local_ray_write_the_same_bytes_as_local(tmp_path, monkeypatch):
    from pipeline.stages import oof

    monkeypatch.setattr(oof, "INFER_ROWS", 1)  # one inference batch a job: several jobs on 160 images
    from pipeline.core.executor import ray_session

    images = make("imbalanced_5", tmp_path / "images")  # 160 files, PNG and JPEG, mixed sizes and modes
    started = time.perf_counter()
    local = _ingest_and_augment(tmp_path, images, "local")
    mid = time.perf_counter()
    with ray_session(2):  # one local Ray (2 CPUs) for the three stages, as a cluster would be
        ray = _ingest_and_augment(tmp_path, images, "ray")
        df, _ = dataset.read_manifest(ray / "ingest")
        pixels, labels = dataset.load_pixels(df.iloc[:60]), df["label_id"].to_numpy()[:60]
        adv_ray = _attack("ray", pixels, labels)
        infer_ray = _fold_inference("ray", dataset.load_pixels(df))
        cand_ray = _descriptor_candidates(df, "ray")
    print(f"ingest + augment: local {mid - started:.1f} s, ray {time.perf_counter() - mid:.1f} s (start-up included)")
    adv_local = _attack("local", pixels, labels)
    assert adv_local[0].shape == pixels.shape and (adv_local[0] != pixels).any()
    assert all((a == b).all() for a, b in zip(adv_local, adv_ray))  # pixels and predictions
    for out in ("ingest", "augment"):
        a, b = _files(local / out), _files(ray / out)
        assert a.keys() == b.keys() and len(a) >= 2  # a manifest and its image store(s)
        assert a == b, [k for k in a if a[k] != b[k]]
        ma, mb = (json.loads((d / f"{out}.json").read_text()) for d in (local, ray))
        assert (ma.pop("executor"), mb.pop("executor")) == ("local", "ray") and ma == mb
    assert len(pd.read_parquet(ray / "augment" / dataset.MANIFEST)) == 2 * 128
    # oof's fold-model inference and split's near-duplicate descriptors: the same bytes
    infer_local = _fold_inference("local", dataset.load_pixels(df))
    probs, emb, (a, b) = infer_local
    assert probs.shape == (160, 5) and emb.shape[0] == 160 and a.shape == (54, 5) and b.shape == (20, 5)
    assert all(np.array_equal(x, y) for x, y in zip(infer_local[:2], infer_ray[:2]))
    assert all(np.array_equal(x, y) for x, y in zip(infer_local[2], infer_ray[2]))
    cand_local = _descriptor_candidates(df, "local")
    assert len(cand_local) > 100  # many candidates, each with its distance, compared exactly
    pd.testing.assert_frame_equal(cand_local, cand_ray, check_exact=True)


def test_with_the_local_executor_nothing_imports_ray(tmp_path):
    images = make("tiny_2x12", tmp_path / "images")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"ingest": {"source": "imagefolder", "path": str(images)}}))
    code = (
        "import sys; from pipeline.__main__ import main; "
        f"rc = main(['ingest', '--quiet', '--params', {str(tmp_path / 'params.yaml')!r}, "
        f"'--out', {str(tmp_path / 'out')!r}, '--metrics', {str(tmp_path / 'm.json')!r}]); "
        "print(rc, 'ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.split() == ["0", "False"]
