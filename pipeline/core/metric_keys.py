"""The metric keys read across modules: what the report, the summary and `dvc exp show`'s columns
take from a stage's metrics file (`metrics/<stem>.json`, top-level keys), and the keys of
`metrics/data_health.json`. A stage that renames one of these breaks its readers, so they are
listed once, here.

Readers go through `Metrics` (or `check`): a key read but not listed is an error, not a silent
`None`. `tests/test_metric_keys.py` holds the report's figures to the list, and the end-to-end run
holds every stage's real metrics to it (each listed key is written, or listed in OPTIONAL).
"""

from __future__ import annotations

from pipeline.core.errors import PipelineError

READ: dict[str, tuple[str, ...]] = {
    "ingest": (
        "in",
        "kept",
        "quarantined",
        "quarantined_fraction",
        "by_reason",
        "skipped",
        "skipped_by_extension",
        "unlabeled",
        "classes",
        "per_class",
        "image_size",
        "channels",
    ),
    "embed": ("backbone", "weights", "image_size", "dim", "samples", "seconds", "device", "precision"),
    "split": (
        "in",
        "train",
        "val",
        "test",
        "unlabeled",
        "removed",
        "removed_by_rule",
        "duplicates",
        "cross_split_exact",
        "cross_split_near_duplicates",
        "per_class",
        "suspected",
    ),
    "oof": ("model", "oof_accuracy", "folds", "n_oof"),
    "clean": (
        "issues",
        "oof_trusted",
        "oof_accuracy",
        "flag_rates",
        "estimated_noise_rate",
        "needs_review",
        "action",
        "removed",
        "relabeled",
        "patches",
    ),
    "pseudo": ("pool", "kept", "coverage", "rounds", "estimated_precision", "precision"),
    "mine": ("categories", "weight_max"),
    "policy_search": ("sub_policies", "candidates", "change_kept"),
    "augment": ("augmented", "policy", "mode"),
    "adversarial": ("kept", "attack", "eps", "flip_rate"),
    "synthesize": (
        "admitted",
        "drawn",
        "verdict",
        "verdict_reason",
        "rejected_by_reason",
        "tstr_val_accuracy",
        "quality",
    ),
    "assemble": ("total", "by_origin", "not_used"),
    "train": ("val_accuracy", "best_epoch", "epochs_run"),
    "evaluate": (
        "accuracy",
        "accuracy_ci95",
        "macro_f1",
        "ece",
        "per_class",
        "temperature",
        "robustness",
        "n_test",
    ),
}
# absent from the default run's metrics: embed's without a backbone
OPTIONAL = {"embed": ("weights", "image_size", "dim", "seconds", "device", "precision")}
# metrics/data_health.json's keys (the report stage writes it)
DATA_HEALTH = (
    "samples_in",
    "quarantined",
    "quarantined_fraction",
    "cross_split_leaks",
    "duplicate_sets",
    "duplicates_removed",
    "duplicate_label_conflicts",
    "label_issue_rate",
    "outlier_rate",
    "near_duplicate_rate",
    "image_issue_rates",
    "estimated_noise_rate",
    "needs_review",
    "oof_accuracy",
    "imbalance_ratio",
    "human_labels",
    "annotator_agreement",
    "unlabeled_pool",
    "pseudo_labels",
    "pseudo_coverage",
    "pseudo_estimated_precision",
    "samples_by_origin",
    "training_set",
    "derived_share",
)


def check(stem: str, key: str) -> str:
    """`key` if other modules may read it from `metrics/<stem>.json`; else an error naming it."""
    if key not in READ.get(stem, ()):
        raise PipelineError(
            f"metrics/{stem}.json: {key!r} is read but not listed in pipeline/core/metric_keys.py READ[{stem!r}]"
        )
    return key


class Metrics(dict):
    """One stage's metrics as another module reads them: a key not listed in READ is an error."""

    def __init__(self, stem: str, data: dict):
        super().__init__(data)
        self.stem = stem

    def __getitem__(self, key: str):
        return super().__getitem__(check(self.stem, key))

    def get(self, key: str, default=None):
        return super().get(check(self.stem, key), default)
