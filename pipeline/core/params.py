"""params.yaml, validated: one pydantic model per section, plus `base`.

A misspelled key or an out-of-range value fails at load time with a one-line
"<section>.<key>: expected ..., got ..." message (a `PipelineError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline.core.errors import PipelineError
from pipeline.core.registry import describe

PARAMS_FILE = "params.yaml"
POLICY_DIR = "augment_policies"  # the shipped policy files
LEARNED_POLICY = "data/policy-search/learned.yaml"  # written by the policy-search stage

# The names of the plug-in families params choose from. Written out so that loading params imports
# no torch; tests/test_registry.py fails when one differs from its registry (sources.SOURCES,
# models.MODELS, attacks.ATTACKS, synthesize.generators.GENERATORS).
SOURCE = Literal["digits", "fashion-mnist", "mnist", "imagefolder", "csv", "labelstudio"]
MODEL = Literal["small_cnn", "resnet"]
TIMM = "timm:"  # a model name with this prefix is any timm architecture (timm:resnet18), pipeline/learn/backbones.py
DEVICE = r"^(auto|cpu|mps|cuda(:\d+)?)$"
ATTACK = Literal["fgsm", "pgd", "pgd_l2"]
GENERATOR = Literal["vae", "gan"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Base(Section):
    seed: int = Field(0, ge=0)
    # where the per-sample stages' work runs (pipeline/core/executor.py): local processes, or Ray Data
    # (RAY_ADDRESS: that cluster; unset: a local Ray); the outputs are the same bytes either way
    executor: Literal["local", "ray"] = "local"
    # where torch runs (embed, oof, pseudo, train, pretrain, adversarial, evaluate, synthesize's judges and
    # TSTR): auto is cuda, else mps, else cpu
    device: str = Field("auto", pattern=DEVICE)


class Backbone(Section):
    """A network trained elsewhere as the pipeline's eyes (pipeline/learn/backbones.py, stages/embed.py):
    its frozen features for every sample, oof's linear probe (`oof.model: probe`), a start for train
    (`train.init: backbone`). None: no backbone, and the pipeline learns from scratch."""

    name: str | None = None  # timm:<architecture> (timm:resnet18, timm:convnext_atto, ...), or small_cnn / resnet
    # a checkpoint file: safetensors or a .pth / .bin state dict of that architecture, or a pipeline model
    # file (`python -m pipeline pretrain`); or "hub": timm downloads the pretrained weights (online only)
    weights: str | None = Field(None, validate_default=True)
    image_size: int | None = Field(None, ge=8, le=1024)  # None: the weights' own (timm: pretrained input size)
    batch_size: int = Field(64, ge=1)  # images per forward pass in embed
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where the device runs it fast (measured)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is None or v in get_args(MODEL) or (v.startswith(TIMM) and len(v) > len(TIMM)):
            return v
        raise ValueError(f"expected timm:<architecture> or one of {', '.join(get_args(MODEL))}, got {v!r}")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str | None, info: ValidationInfo) -> str | None:
        name = info.data.get("name")
        if name is not None and v is None:
            raise ValueError(f"expected a checkpoint file or 'hub' for backbone {name}, got None")
        return v


class Ingest(Section):
    source: SOURCE = "digits"
    path: str | None = None  # IDX directory, image-folder root or CSV file
    unlabeled_path: str | None = None  # a folder of unlabeled images (any depth): the pool
    document_root: str | None = None  # labelstudio: where the export's image paths resolve (None: its folder)
    # the fraction of labeled samples (outside a source test set) that keep their label, per class; the
    # rest join the pool with the truth kept in `hidden_label` (to measure semi-supervised learning)
    keep_labels: float = Field(1.0, gt=0.0, le=1.0)
    # auto: the median shorter side of the images (the native size of digits / IDX), rounded down
    # to a multiple of 4, from 8 to AUTO_MAX_SIZE; an int fixes it. null is the old spelling of auto
    image_size: int | str | None = "auto"
    channels: Literal[1, 3, "auto"] = "auto"  # auto: 3 when most images have colour, else 1
    # what transparency is composited onto; auto: per image, white under dark content, else black
    background: Literal["auto", "black", "white", "grey"] = "auto"
    max_bad_fraction: float = Field(0.05, ge=0.0, le=1.0)
    classes: list[str] | None = None  # fixes the class list; other labels are quarantined
    max_pixels: int = Field(40_000_000, ge=1)  # larger images are decompression-bomb suspects
    min_side: int = Field(4, ge=1)
    shard_size: int = Field(8192, ge=1)
    workers: int = Field(0, ge=0)  # 0: all cores

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, v):
        if v is None or v == "auto":
            return "auto"
        if isinstance(v, bool) or not isinstance(v, int) or not 4 <= v <= 1024:
            raise ValueError(f"expected an integer from 4 to 1024 or auto, got {v!r}")
        return v

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"expected distinct class names, got {v}")
        return v


class NearDuplicates(Section):
    """The detector that forms the split's clusters (pipeline/dedup/neardup.py)."""

    enabled: bool = True
    max_shift: int = Field(2, ge=0, le=8)  # px; copies moved further are not looked for
    grid: int = Field(10, ge=4, le=32)  # descriptor lattice (grid x grid samples)
    radius: float = Field(0.12, gt=0.0, le=2.0)  # candidate radius between unit-norm descriptors
    neighbours: int = Field(4, ge=1, le=64)  # candidates kept per query (and offset)
    index: Literal["own", "faiss"] = "own"  # the candidate search: the hand-written cells, or faiss's IVF
    rms_threshold: float = Field(6.5, ge=0.0, le=255.0)  # near duplicate if rms residual <= this ...
    peak_threshold: float = Field(12.0, ge=0.0, le=255.0)  # ... or smoothed peak residual <= this
    chunk: int = Field(8192, ge=16)  # images per feature batch (bounds memory)


class Suspects(Section):
    """The looser content check after the split (pipeline/dedup/suspects.py): pairs across splits that
    the cascade did not join but whose coarse content matches (one picture at another size, ...)."""

    enabled: bool = True
    # suspected within factor x the median distance to the k-th nearest sample (cleanlab's near_duplicate rule
    # takes 0.13 x the nearest; the k-th holds where duplicates are common). On Adwaita's icons at 16-256 px this
    # caught 91% of the pairs of renderings of one icon; on Fashion-MNIST it suspects 7 test images of the
    # official split (docs/split.md)
    factor: float = Field(0.13, ge=0.0, le=10.0)
    k: int = Field(10, ge=1, le=100)
    join: bool = False  # join suspected pairs into clusters before splitting (no suspect then crosses)


class ClusterLimit(Section):
    """How large union-find may grow a cluster through near-duplicate and suspected links: at most
    `share` of its class's labeled samples, at least `min_size`. Links past it are cut, weakest first
    (the highest residual); exact copies, what the checks call duplicates and groups are never cut."""

    share: float = Field(0.1, gt=0.0, le=1.0)  # 1.0: no limit but the class itself
    min_size: int = Field(8, ge=2)


class Split(Section):
    fractions: dict[Literal["train", "val", "test"], float] = {"train": 0.7, "val": 0.1, "test": 0.2}
    respect_source_split: bool = True
    fail_on_leak: bool = True  # fail when a post-hoc check finds a duplicate pair across splits
    drop_duplicates: bool = False  # keep one sample of each duplicate set within a split
    near_duplicates: NearDuplicates = NearDuplicates()
    suspects: Suspects = Suspects()
    cluster_limit: ClusterLimit = ClusterLimit()
    checks: dict[str, dict] = {"exact": {}, "near_duplicates": {}}  # {name: knobs}, pipeline/dedup/leakcheck.py
    report_examples: int = Field(8, ge=0, le=64)  # clusters / removed samples in plots/split

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != {"train", "val", "test"}:
            raise ValueError(f"expected keys train, val, test, got {sorted(v)}")
        if any(f < 0 for f in v.values()) or v["train"] <= 0:
            raise ValueError(f"expected non-negative fractions with train > 0, got {v}")
        if abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"expected fractions summing to 1, got {sum(v.values()):g}")
        return v

    @field_validator("checks")
    @classmethod
    def _checks(cls, v: dict[str, dict]) -> dict[str, dict]:
        from pipeline.dedup import leakcheck  # the registry; imported here to keep this module light

        for name, knobs in v.items():
            if name not in leakcheck.CHECKS:
                raise ValueError(f"expected a leak check (one of {', '.join(sorted(leakcheck.CHECKS))}), got {name!r}")
            model = leakcheck.CHECKS[name].Knobs
            try:
                model.model_validate(knobs or {})
            except ValidationError as e:
                raise ValueError(
                    f"{describe(e, name)} (its knobs: {', '.join(model.model_fields) or 'none'})"
                ) from None
        return {name: dict(knobs or {}) for name, knobs in v.items()}


class AssembleUse(Section):
    """Which derived origins the training set takes. The stages that make them still run and show
    their galleries; the defaults follow the ablation at the default budget (docs/report.md): on
    Fashion-MNIST at 12 epochs the augmented, adversarial and synthetic rows each cost clean
    accuracy and bought none, while pseudo-labels of a pool bought 0.034 (docs/labeling.md)."""

    augmented: bool = False
    adversarial: bool = False
    synthetic: bool = False
    pseudo: bool = True


class Assemble(Section):
    real_weight: float = Field(1.0, gt=0.0)
    use: AssembleUse = AssembleUse()


class TrainAdversarial(Section):
    """Adversarial examples made on the fly against the model being trained (Madry et al.).

    `attack: pgd, steps: 1, step_size: 1.25 * eps` with a random start is the fast
    FGSM-with-random-start training of Wong et al. 2020.
    """

    attack: Literal["none"] | ATTACK = "none"
    eps: float = Field(0.1, gt=0.0, le=100.0)
    steps: int = Field(1, ge=1)
    step_size: float | None = Field(None, gt=0.0)  # None: 2.5 * eps / steps
    random_start: bool = True
    ratio: float = Field(1.0, ge=0.0, le=1.0)  # fraction of each batch replaced


def policy_file(v: str) -> str:
    """A policy param names a file by its path (dvc.yaml lists it as a dependency)."""
    if not v.endswith((".yaml", ".yml")) or "/" not in v.replace("\\", "/"):
        raise ValueError(
            f"expected the path of a policy file such as {POLICY_DIR}/randaugment.yaml or {LEARNED_POLICY}, got {v!r}"
        )
    return v


class TrainUnlabeled(Section):
    """FixMatch (Sohn et al. 2020, pipeline/learn/fixmatch.py): the unlabeled pool (split "unlabeled")
    as a consistency loss in every training step. `weight` 0: off."""

    weight: float = Field(0.0, ge=0.0)  # lambda_u
    ratio: int = Field(7, ge=1)  # pool images per labeled image in a step (mu)
    threshold: float = Field(0.95, gt=0.0, le=1.0)  # a weak view's confidence that makes its prediction a target
    policy: str = "augment_policies/randaugment.yaml"  # the strong view's policy file (then Cutout)
    cutout: float = Field(0.5, ge=0.0, le=1.0)  # the strong view's Cutout: a square up to this fraction of a side

    @field_validator("policy")
    @classmethod
    def _policy_file(cls, v: str) -> str:
        return policy_file(v)


class Finetune(Section):
    """train.init: backbone: how the backbone's weights are trained (pipeline/learn/fit.py)."""

    head_epochs: int = Field(1, ge=0)  # the new head alone first (the body frozen), then everything
    body_lr: float = Field(0.1, gt=0.0, le=1.0)  # the body's learning rate, as a fraction of train.lr
    freeze: bool = False  # true: the body stays frozen throughout (a linear head on its features)


class Train(Section):
    model: MODEL = "small_cnn"
    # scratch: train.model from random weights; backbone: backbone.name from backbone.weights with a new head
    init: Literal["scratch", "backbone"] = "scratch"
    finetune: Finetune = Finetune()
    epochs: int = Field(30, ge=1)
    min_steps: int = Field(1000, ge=0)  # the train stage: more epochs on small data to reach this many steps ...
    max_epochs: int = Field(200, ge=1)  # ... up to this (patience stretched in proportion)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(3e-3, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    warmup_epochs: float = Field(1.0, ge=0.0)
    label_smoothing: float = Field(0.05, ge=0.0, lt=1.0)
    patience: int = Field(5, ge=1)  # early stopping on validation loss
    class_weights: bool = False
    width: int = Field(16, ge=4)  # channels of the first stage; later stages double (small_cnn: 73K params)
    threads: int = Field(0, ge=0)  # torch threads; 0: every core the process may use (results depend on it)
    # online mixing at batch level (pipeline/augment/mixing.py); 0 / off by default
    mixup_alpha: float = Field(0.0, ge=0.0)  # Beta(a, a); 0: off
    cutmix_alpha: float = Field(0.0, ge=0.0)  # Beta(a, a); 0: off
    mix_prob: float = Field(1.0, ge=0.0, le=1.0)  # probability that a batch is mixed
    switch_prob: float = Field(0.5, ge=0.0, le=1.0)  # with both on: probability of CutMix
    random_erasing: float = Field(0.0, ge=0.0, le=1.0)  # per-image probability
    adversarial: TrainAdversarial = TrainAdversarial()
    # hard examples (the mine stage's weights arrive as the training set's `weight` column)
    sampler: Literal["uniform", "hardness"] = "uniform"  # hardness: `weight` are sampling odds, not loss weights
    ohem_fraction: float = Field(0.0, ge=0.0, le=1.0)  # keep the top fraction of losses per batch; 0: off
    focal_gamma: float = Field(0.0, ge=0.0)  # focal loss (1 - p_t)^gamma; 0: off
    # curriculum (draws.curriculum_order): each epoch draws from the easiest share of the training set by
    # mine's hardness (hard_to_easy: the hardest), growing linearly from curriculum_start to all of it
    # by curriculum_full x epochs; the steps per epoch stay, so it compares with uniform at equal steps
    curriculum: Literal["none", "easy_to_hard", "hard_to_easy"] = "none"
    curriculum_start: float = Field(0.25, gt=0.0, le=1.0)
    curriculum_full: float = Field(0.5, ge=0.0, le=1.0)
    # added to base.seed for this stage only: another training run on the same data (the split, oof
    # and every data stage stay), for seed noise and the ablation's repeats
    seed: int = Field(0, ge=0)
    # knowledge from the oof folds: each target becomes (1 - s) x its smoothed one-hot label + s x the
    # fold ensemble's out-of-fold probabilities of the sample (of its parent, for derived copies); 0: off
    soft_labels: float = Field(0.0, ge=0.0, le=1.0)
    # training processes (torch DDP through torch.distributed.run, gloo: the training core runs on CPU); each takes
    # a share of every batch, so the global batch and the schedule stay those of one process
    nproc: int = Field(1, ge=1)
    unlabeled: TrainUnlabeled = TrainUnlabeled()


# the training recipe that stages training a model of their own (oof's fold models, the synthetic
# gate's TSTR classifier) take from `train`, whole; dvc.yaml lists the same keys for them
RECIPE_KEYS = (
    "model",
    "width",
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "label_smoothing",
    "class_weights",
    "threads",
)


class Robustness(Section):
    attacks: list[ATTACK] = ["fgsm", "pgd"]
    eps: list[float] = [0.05, 0.1]  # accuracy under attack at each; eps 0 (clean) is always added
    steps: int = Field(10, ge=1)  # PGD steps
    max_samples: int = Field(1000, ge=0)  # test samples attacked (0: all); a seeded subset


class Evaluate(Section):
    batch_size: int = Field(512, ge=1)
    robustness: Robustness = Robustness()
    ece_bins: int = Field(15, ge=2)
    max_test_evaluations: int = Field(10, ge=1)
    max_interval: float = Field(0.05, gt=0.0, le=1.0)  # half-width of accuracy's 95% interval above: a warning


class Report(Section):
    examples: int = Field(16, ge=1, le=128)  # images per gallery the report draws (outliers, pseudo-labels)


# `python -m pipeline ablate`: a small training budget for every row ...
DEFAULT_BUDGET = {
    "train.epochs": 12,
    "train.min_steps": 300,
    "train.max_epochs": 60,
    "evaluate.robustness.max_samples": 200,
}
# ... and the recipe's rows switch data stages on and off (pipeline/commands/ablate.py)
DEFAULT_RECIPE = {
    "clean": {"with": {"clean.action": "remove"}, "without": {"clean.action": "flag"}},
    "mine": {"with": {"mine.enabled": True}, "without": {"mine.enabled": False}},
    "augment": {
        "with": {"augment.enabled": True, "assemble.use.augmented": True},
        "without": {"augment.enabled": False},
    },
    "mixing": {"with": {"train.cutmix_alpha": 1.0, "train.mix_prob": 0.5}, "without": {"train.cutmix_alpha": 0.0}},
    "adversarial": {
        "with": {"adversarial.enabled": True, "assemble.use.adversarial": True},
        "without": {"adversarial.enabled": False},
    },
    "synthesize": {
        "with": {"synthesize.enabled": True, "assemble.use.synthetic": True},
        "without": {"synthesize.enabled": False},
    },
    "pseudo": {"with": {"pseudo.enabled": True, "assemble.use.pseudo": True}, "without": {"pseudo.enabled": False}},
}


class Ablate(Section):
    seeds: int = Field(2, ge=1)  # train seeds (train.seed 0..seeds-1) per row
    # {stage: {with: {key: value}, without: {key: value}}}: rows "all" (every with), "none" (every without) and
    # "no-<stage>" (all but that one)
    recipe: dict[str, dict[Literal["with", "without"], dict[str, bool | int | float | str]]] = DEFAULT_RECIPE
    # every row's training budget: small, so that the ablation costs minutes on the user's own data (each row's
    # figures compare rows; they are not the shipped model's); {} trains each row as `dvc repro` would
    budget: dict[str, bool | int | float | str] = DEFAULT_BUDGET
    set: dict[str, bool | int | float | str] = {}  # applied to every row after the budget (a dataset, other params)


class LrFind(Section):
    min_lr: float = Field(1e-5, gt=0.0)
    max_lr: float = Field(1.0, gt=0.0)
    steps: int = Field(100, ge=10)

    @field_validator("max_lr")
    @classmethod
    def _above_min_lr(cls, v: float, info) -> float:
        if "min_lr" in info.data and v <= info.data["min_lr"]:
            raise ValueError(f"expected max_lr > min_lr = {info.data['min_lr']:g}, got {v:g}")
        return v


class Adversarial(Section):
    enabled: bool = True
    source_model: str = "own"  # "own": train one here on train/val; or a model file path
    source_epochs: int = Field(10, ge=1)  # for the own source model
    attack: ATTACK = "pgd"
    eps: float = Field(0.1, gt=0.0, le=100.0)  # in [0, 1] pixel units (L2: of the whole image)
    steps: int = Field(10, ge=1)
    step_size: float | None = Field(None, gt=0.0)  # None: 2.5 * eps / steps
    random_start: bool = True
    targeted: bool = False  # towards a random other class
    fraction: float = Field(0.1, ge=0.0, le=1.0)  # of the train samples
    keep: Literal["all", "successful"] = "all"
    weight: float = Field(1.0, gt=0.0)  # sample weight in the assembled training set
    batch_size: int = Field(256, ge=1)


class Augment(Section):
    enabled: bool = True
    policy: str = "augment_policies/randaugment.yaml"  # a policy file, or data/policy-search/learned.yaml
    copies: int = Field(1, ge=1, le=100)  # augmented copies of each train sample (offline)
    # offline: stored copies (data/augment); online: train applies the policy per batch; auto:
    # copies as offline, and train also online below `online_below` labeled train images
    mode: Literal["offline", "online", "auto"] = "auto"
    online_below: int = Field(4000, ge=0)
    weight: float = Field(1.0, gt=0.0)  # sample weight of a copy in the assembled training set
    workers: int = Field(0, ge=0)  # processes; 0: all cores
    preview: int = Field(8, ge=0)  # originals per preview grid in plots/augment/
    # override the policy file's N and M (RandAugment's num_ops, magnitude), so that
    # `dvc exp run -S` can search them; None: the file's value
    num_ops: int | None = Field(None, ge=1, le=10)
    magnitude: int | float | None = Field(None, ge=0, le=10)

    @field_validator("policy")
    @classmethod
    def _policy_file(cls, v: str) -> str:
        return policy_file(v)


# the ops policy search may use: pipeline/augment/ops.py's, less SamplePairing (it needs a partner
# pool); written out so that loading params never imports OpenCV (search.py checks they match)
SearchOp = Literal[
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "AutoContrast",
    "Invert",
    "Equalize",
    "Solarize",
    "Posterize",
    "Contrast",
    "Color",
    "Brightness",
    "Sharpness",
    "Cutout",
]


class PolicySearch(Section):
    """Learn an AutoAugment policy by density matching with the oof fold models (pipeline/stages/policy_search.py)."""

    enabled: bool = True  # false: learned.yaml is the identity policy
    candidates: int = Field(100, ge=1)  # sub-policies scored per fold (random search)
    max_samples: int = Field(400, ge=1)  # held-out images per fold each candidate is scored on
    top: int = Field(5, ge=1)  # sub-policies kept per fold
    min_change: float = Field(0.05, ge=0.0, le=1.0)  # a candidate must move pixels by this much (mean |diff| / 255)
    probability: float = Field(0.5, gt=0.0, le=1.0)  # of each op in the learned policy (not searched)
    ops: list[SearchOp] = Field(
        list(get_args(SearchOp))[1:],  # every op but Identity
        min_length=1,
    )  # AutoAugment's, less SamplePairing
    seed: int = Field(0, ge=0)  # added to base.seed


class InjectNoise(Section):
    """Corrupt train labels before oof, keeping the truth, to measure detection (0: off)."""

    rate: float = Field(0.0, ge=0.0, lt=1.0)
    kind: Literal["symmetric", "pairwise"] = "symmetric"  # pairwise: class k -> k + 1, or `pairs`
    seed: int = Field(0, ge=0)
    # pairwise only: class-name pairs swapped both ways (e.g. [[Shirt, T-shirt/top]]); others kept
    pairs: list[tuple[str, str]] | None = None


class Oof(Section):
    folds: int = Field(3, ge=2)
    epochs: int = Field(7, ge=1)  # at least; more on small data (min_steps)
    min_steps: int = Field(1500, ge=0)  # optimizer steps per fold model at least, up to max_epochs
    max_epochs: int = Field(100, ge=1)
    # training dynamics (mine's data maps) are recorded over the epochs after this fraction of them:
    # a model trained from scratch starts at chance, so the first epochs measure learning, not the sample
    burn_in: float = Field(0.5, ge=0.0, lt=1.0)
    # None: train.model; probe: a logistic regression on the backbone's embeddings (needs backbone.name)
    model: MODEL | Literal["probe"] | None = None
    width: int | None = Field(None, ge=4)  # None: train.width
    probe_c: float = Field(1.0, gt=0.0)  # the probe's inverse L2 strength (sklearn's C)
    # a share of each fold model's training rows held out to stop it where their loss stops falling
    # for `patience` epochs (the best epoch is kept); 0: train every planned epoch
    holdout: float = Field(0.0, ge=0.0, lt=0.5)
    patience: int = Field(10, ge=1)
    # the fold models resize larger images to this side (None: never): fast, and their job is to
    # tell a wrong label, not to be the final model
    image_size: int | None = Field(32, ge=8)
    tta: bool = True  # average probabilities over the image and its four 1-pixel shifts
    shift: float = Field(
        0.08, ge=0.0, le=0.25
    )  # train the fold models on images moved by up to this fraction of a side


class Pseudo(Section):
    """pseudo-labels for the unlabeled pool (pipeline/stages/pseudo.py); nothing to do without a pool."""

    enabled: bool = True
    # teachers: 1 = the oof ensemble only; each more trains a student on labeled + pseudo (Noisy Student)
    rounds: int = Field(1, ge=1, le=10)
    portion: float = Field(0.5, gt=0.0, le=1.0)  # per predicted class, the most confident share kept ...
    portion_step: float = Field(0.2, ge=0.0, le=1.0)  # ... raised by this each round (curriculum labeling)
    precision: float = Field(0.95, gt=0.0, le=1.0)  # confidence floor: labeled predictions above it this right
    min_confidence: float = Field(0.0, ge=0.0, le=1.0)  # a kept label's probability at least (beside the floor)
    min_agreement: float = Field(1.0, ge=0.0, le=1.0)  # share of the fold models voting for it (round 1)
    neighbours: int = Field(10, ge=0)  # its k nearest labeled train samples (oof embeddings) agree; 0: off
    balance: float = Field(2.0, ge=1.0)  # a class's pseudo-labels at most this x its labeled share
    weight: float = Field(1.0, ge=0.0)  # a pseudo-labeled sample's loss weight in training
    student_epochs: int = Field(10, ge=1)  # at least (size-aware, as train.epochs), early-stopped on val
    shift: float = Field(0.08, ge=0.0, le=0.25)  # the students' augmentation: random shifts of this fraction


class Clean(Section):
    action: Literal["flag", "remove", "relabel"] = "flag"  # automatic actions touch train only
    relabel_threshold: float = Field(0.9, ge=0.0, le=1.0)  # suggested label's probability
    remove_issues: list[str] = ["label"]  # issue types the remove action acts on
    issues: dict[str, dict] = {
        name: {}
        for name in ("label", "outlier", "near_duplicate", "class_imbalance")
        + ("dark", "light", "low_information", "blurry", "odd_aspect_ratio", "odd_size", "grayscale")
    }
    inject_noise: InjectNoise = InjectNoise()
    gallery: int = Field(32, ge=0)  # images in plots/clean/label_issues.png
    min_oof_accuracy: float = Field(0.75, ge=0.0, le=1.0)  # below: a warning that the flags rest on weak models
    max_flag_rate: float = Field(0.3, gt=0.0, le=1.0)  # above, for any issue type: a warning

    @field_validator("issues")
    @classmethod
    def _known_issues(cls, v: dict[str, dict]) -> dict[str, dict]:
        from pipeline.quality import issues  # the detector registry (no torch)

        for name, options in v.items():
            try:
                issues.get(name, options)
            except PipelineError as e:
                raise ValueError(f"expected a known issue type with valid options: {e}") from None
        return v

    @model_validator(mode="after")
    def _removable(self) -> "Clean":
        unknown = sorted(set(self.remove_issues) - set(self.issues))
        if unknown:
            raise ValueError(f"expected remove_issues among clean.issues, got {unknown}")
        return self


class Mine(Section):
    enabled: bool = True  # false: weights 1 (hardness is still measured and reported)
    ambiguous_variability: float = Field(0.07, ge=0.0)  # data maps: std of p_given over epochs
    easy_confidence: float = Field(0.5, ge=0.0, le=1.0)  # mean p_given at or above: easy
    suspect_weight: float = Field(1.0, ge=0.0)  # weight of a likely mislabeled train sample
    min_weight: float = Field(0.25, gt=0.0)
    max_weight: float = Field(4.0, gt=0.0)
    top: int = Field(32, ge=0)  # hardest examples listed and drawn


class SynthVae(Section):
    """The conditional convolutional VAE (pipeline/synthesize/generators.py)."""

    epochs: int = Field(30, ge=0)  # 0: untrained (the gate must reject it)
    latent_dim: int = Field(16, ge=1)
    width: int = Field(32, ge=4)  # channels of the first conv; the second has twice as many
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-3, gt=0.0)  # Adam
    beta: float = Field(0.1, ge=0.0)  # weight of the KL term (< 1: sharper, more varied samples)
    kl_warmup_epochs: int = Field(10, ge=0)  # the KL weight ramps up linearly over these epochs
    # where latent codes are sampled. normal: the prior N(0, temperature^2 I); mixture: a per-class
    # Gaussian mixture fitted to the train images' posterior means after training (ex-post density
    # estimation, Ghosh et al. 2020), each component's noise scaled by temperature
    prior: Literal["normal", "mixture"] = "mixture"
    temperature: float = Field(1.0, gt=0.0)
    mixture_components: int = Field(10, ge=1)  # per class
    # decoding: sigmoid(logits / pixel_temperature); 1 is the Bernoulli mean (blurry), lower is sharper.
    # Data-dependent: 0.4 lifts Fashion-MNIST's TSTR (0.78 -> 0.82) but lowers digits' (0.81 -> 0.70)
    pixel_temperature: float = Field(1.0, gt=0.0)


class SynthGan(Section):
    """The conditional DCGAN with an auxiliary classifier (ACGAN) discriminator."""

    epochs: int = Field(30, ge=0)  # 0: untrained (the gate must reject it)
    latent_dim: int = Field(32, ge=1)
    width: int = Field(32, ge=4)  # discriminator's first conv; the generator mirrors it
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-4, gt=0.0)  # Adam, betas (0.5, 0.999), both networks
    aux_weight: float = Field(1.0, ge=0.0)  # weight of the class loss (ACGAN)
    temperature: float = Field(1.0, gt=0.0)  # sampling: z ~ N(0, temperature^2)


class SynthGate(Section):
    """Per-sample admission and the generator's verdict (pipeline/synthesize/gate.py)."""

    tau: float = Field(0.5, ge=0.0, le=1.0)  # off_label: judges' mean p(conditioning label) < tau
    copy_quantile: float = Field(0.01, ge=0.0, le=0.5)  # copies_train threshold; 0: check off
    holdout_quantile: float = Field(0.01, gt=0.0, le=0.5)  # copies_val_test threshold; always on
    realism_quantile: float = Field(0.05, ge=0.0, le=0.5)  # off_manifold threshold; 0: check off
    min_admitted: float = Field(0.2, ge=0.0, le=1.0)  # below: the generator is rejected
    pr_k: int = Field(3, ge=1)  # k of the k-NN manifolds (precision, recall, realism)
    max_features: int = Field(5000, ge=10)  # samples per side for precision / recall / KID
    kid_subsets: int = Field(10, ge=1)
    kid_subset_size: int = Field(1000, ge=2)
    tstr_epochs: int = Field(20, ge=1)  # train-on-synthetic classifier (the train recipe)


class Synthesize(Section):
    enabled: bool = True  # false: an empty manifest
    generator: GENERATOR = "vae"
    per_class: int = Field(20, ge=0)  # samples drawn per class (before the gate)
    balance: bool = False  # true: instead, top every class up to the largest class's train count
    max_draws: int = Field(4, ge=1, le=100)  # per class, at most this times its target is drawn to replace rejects
    weight: float = Field(1.0, gt=0.0)  # sample weight in the assembled training set
    vae: SynthVae = SynthVae()
    gan: SynthGan = SynthGan()
    gate: SynthGate = SynthGate()
    preview: int = Field(8, ge=1, le=32)  # samples per class in plots/synthesize/samples.png


class Params(Section):
    base: Base = Base()
    ingest: Ingest = Ingest()
    backbone: Backbone = Backbone()
    split: Split = Split()
    assemble: Assemble = Assemble()
    train: Train = Train()
    evaluate: Evaluate = Evaluate()
    lr_find: LrFind = LrFind()
    report: Report = Report()
    ablate: Ablate = Ablate()
    adversarial: Adversarial = Adversarial()
    augment: Augment = Augment()
    policy_search: PolicySearch = PolicySearch()
    oof: Oof = Oof()
    clean: Clean = Clean()
    pseudo: Pseudo = Pseudo()
    mine: Mine = Mine()
    synthesize: Synthesize = Synthesize()

    @model_validator(mode="after")
    def _probe_has_backbone(self) -> "Params":
        if self.oof.model == "probe" and self.backbone.name is None:
            raise ValueError(
                "oof.model: probe fits on the backbone's embeddings: set backbone.name and backbone.weights"
            )
        if self.train.init == "backbone" and self.backbone.name is None:
            raise ValueError("train.init: backbone trains from the backbone: set backbone.name and backbone.weights")
        if self.train.init == "backbone" and self.train.nproc > 1:
            raise ValueError("train.init: backbone trains in one process: set train.nproc 1")
        return self


def parse(raw: dict | None, origin: str = PARAMS_FILE) -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as e:
        raise PipelineError(f"{origin}: {describe(e)}") from None


def check_references(params: Params, root: str | Path, origin: str = PARAMS_FILE) -> None:
    """The files params name exist, so a bad value fails when params load, before any stage does
    work (not only when the stage that reads it runs, after hours of the ones before it)."""
    root = Path(root)  # the project: paths in params are relative to it (or to where the stage runs)
    policy = params.augment.policy
    if policy != LEARNED_POLICY and not ((root / policy).is_file() or Path(policy).is_file()):
        known = ", ".join(sorted(f"{POLICY_DIR}/{p.name}" for p in (root / POLICY_DIR).glob("*.y*ml")))
        raise PipelineError(
            f"{origin}: augment.policy: {policy}: no such policy file "
            f"(the shipped ones: {known or 'none'}; or {LEARNED_POLICY}, which policy-search writes)"
        )
    source = params.adversarial.source_model
    if params.adversarial.enabled and source != "own" and not ((root / source).is_file() or Path(source).is_file()):
        raise PipelineError(
            f"{origin}: adversarial.source_model: {source}: no such model file (or 'own' to train one here)"
        )


def read_yaml(path: str | Path, what: str):
    """The YAML document at `path`; a missing file or bad YAML is one line naming it (`what`: the
    kind of file, for the error)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: no such {what}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML: {e}".splitlines()[0]) from None


def load(path: str | Path = PARAMS_FILE) -> Params:
    raw = read_yaml(path, "params file (run from the project root)")
    params = parse(raw, str(path))
    check_references(params, Path(path).parent, str(path))
    return params


# `python -m pipeline params`: the effective params, as YAML in params.yaml's shape. params.yaml
# holds every knob (tests/test_params.py fails on a code-only default), so this equals it.
OPAQUE = (
    "split.fractions",
    "split.checks",
    "clean.issues",
    "ablate.recipe",
    "ablate.set",
)  # plug-in dicts: taken as written


def missing_keys(raw: dict | None, params: Params) -> list[str]:
    """Dotted keys that `params` has and the params file `raw` does not spell out."""

    def walk(effective: dict, written, prefix: str) -> list[str]:
        out = []
        for key, value in effective.items():
            name = f"{prefix}{key}"
            if not isinstance(written, dict) or key not in written:
                out.append(name)
            elif isinstance(value, dict) and name not in OPAQUE:
                out += walk(value, written[key], name + ".")
        return out

    return walk(params.model_dump(mode="json"), raw or {}, "")


def dump(params: Params) -> str:
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, width=110)


def add_arguments(p) -> None:
    p.add_argument(
        "--missing",
        action="store_true",
        help="list the keys params.yaml leaves to code defaults instead (none, when complete)",
    )


def main(params: Params, args) -> None:
    if args.missing:
        raw = yaml.safe_load(Path(args.params).read_text())
        print("\n".join(missing_keys(raw, params)))
    else:
        print(dump(params), end="")
