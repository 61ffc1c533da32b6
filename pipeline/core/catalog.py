"""The one list of what `python -m pipeline` runs: the DAG's stages in dvc.yaml's order, then the
commands outside the DAG. The dispatcher, the report's sections and the tests derive their lists
from it; tests/test_wiring.py holds dvc.yaml to it."""

from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    module: str  # imported only when run, so that `python -m pipeline split` never pays for torch
    help: str


DAG = {
    "ingest": Entry(
        "pipeline.stages.ingest",
        "decode and validate a source into a manifest + image stores; quarantine bad input",
    ),
    "embed": Entry(
        "pipeline.stages.embed",
        "a frozen pretrained backbone's features for every sample (backbone.*; nothing without one)",
    ),
    "split": Entry(
        "pipeline.stages.split",
        "stratified, group-aware, leak-safe train/val/test split: duplicate clusters never cross splits",
    ),
    "oof": Entry(
        "pipeline.stages.oof",
        "out-of-fold probabilities, embeddings and training dynamics by group-aware K-fold",
    ),
    "clean": Entry(
        "pipeline.stages.clean",
        "cleanlab label issues, outliers, near-duplicates, imbalance; flag / remove / relabel train",
    ),
    "pseudo": Entry(
        "pipeline.stages.pseudo",
        "pseudo-labels for the unlabeled pool from the oof ensemble, then self-training rounds (Noisy Student)",
    ),
    "mine": Entry(
        "pipeline.stages.mine",
        "hardness, data-map categories and sampling weights; suspects are not hard",
    ),
    "policy-search": Entry(
        "pipeline.stages.policy_search",
        "learn an AutoAugment policy from the data: density matching with the oof fold models (Fast AutoAugment)",
    ),
    "augment": Entry(
        "pipeline.stages.augment",
        "offline augmented copies of the train samples under a policy file "
        "(AutoAugment, RandAugment, TrivialAugment, albumentations)",
    ),
    "adversarial": Entry(
        "pipeline.stages.adversarial",
        "FGSM / PGD examples of train samples as a derived dataset with lineage",
    ),
    "synthesize": Entry(
        "pipeline.stages.synthesize",
        "class-conditional VAE / GAN samples, admitted through a quality gate "
        "(FID, KID, precision/recall, memorisation, label consistency, TSTR)",
    ),
    "assemble": Entry(
        "pipeline.stages.assemble",
        "build the training-set manifest (real + derived samples) with lineage checks",
    ),
    "train": Entry(
        "pipeline.stages.train",
        "train the model on the assembled set, early-stopping on val",
    ),
    "evaluate": Entry(
        "pipeline.stages.evaluate",
        "score the model on the test split: accuracy, per-class, confusion, calibration",
    ),
    "report": Entry(
        "pipeline.stages.report",
        "one offline HTML page of the run, stage by stage (report/index.html), and metrics/data_health.json",
    ),
}
COMMANDS = {
    "ablate": Entry(
        "pipeline.commands.ablate",
        "queue a DVC experiment per recipe row and train seed (all, none, all but one stage); --collect the table",
    ),
    "plots-offline": Entry(
        "pipeline.commands.dvcplots",
        "write a `dvc plots show --html-template` page with Vega inlined (offline)",
    ),
    "pretrain": Entry(
        "pipeline.commands.pretrain",
        "train backbone.name on the train split and write a checkpoint backbone.weights accepts",
    ),
    "lr-find": Entry(
        "pipeline.commands.lr_find",
        "LR range test: sweep the learning rate and suggest a maximum",
    ),
    "params": Entry(
        "pipeline.core.params",
        "print the effective params (every knob, as params.yaml holds them) as YAML",
    ),
    "summary": Entry(
        "pipeline.commands.summary",
        "the run in ten lines: test accuracy with its interval, data counts, flags, where things are",
    ),
    "label": Entry(
        "pipeline.labelstudio.cli",
        "push samples to / pull annotations from Label Studio; serve a local one",
    ),
}
ENTRIES = DAG | COMMANDS
STAGES = tuple(DAG)  # dvc.yaml's stages, in its order
