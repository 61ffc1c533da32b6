"""report: the whole run on one offline page, and the data's health in one diffable file.

`report/index.html` has a data card (sources, counts by split and origin, class balance, the
conservation and lineage checks) and then one section per stage in pipeline order, each with its
key figures, its pictures and all its metrics. It is self-contained and works offline: pictures
are embedded (PNG as data: URIs), charts are inline SVG drawn here by matplotlib, and the page has
no script, no font and no link to anything outside it. The same inputs give the same bytes.

`metrics/data_health.json` (the stage's metrics file) is one flat set of figures that describe the
data rather than the model, for `dvc metrics diff` between revisions and experiments:
quarantined, cross-split leaks, duplicates, label-issue / outlier rates, imbalance, annotator
agreement, samples by origin, the derived share, the pool and its pseudo-labels.
"""

from __future__ import annotations

import argparse
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from pipeline.core import artifacts, catalog, dataset, metric_keys, patches, schema, wiring
from pipeline.core.console import log
from pipeline.core.errors import PipelineError
from pipeline.core.wiring import StageParams
from pipeline.quality.issues import IMAGE_ISSUES
from pipeline.render import page

# the stages that write a plots/ folder of pictures (their wiring's `plots`) the report shows
PLOT_FOLDERS = {"split", "clean", "mine", "augment", "adversarial", "synthesize", "train", "evaluate"}
# (stage, metrics file stem, plots folder) in pipeline order
ORDER = tuple((s, s.replace("-", "_"), s if s in PLOT_FOLDERS else None) for s in catalog.STAGES if s != "report")


@dataclass
class Inputs:
    """What the report reads: metrics by file stem, the plots folders by name, manifests on demand."""

    params: StageParams
    args: argparse.Namespace
    metrics: dict[str, dict]
    plots: dict[str, Path]
    _frames: dict = field(default_factory=dict)

    def m(self, stem: str, path: str | tuple, default=None):
        """A metric by dotted path ("split.duplicates.sets") or tuple of keys, or `default`."""
        value = self.metrics.get(stem, {})
        parts = path.split(".") if isinstance(path, str) else path
        metric_keys.check(stem, parts[0])  # what the report reads from a stage is listed in core
        for part in parts:
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
        return value

    def frame(self, name: str) -> tuple[pd.DataFrame, list[str]]:
        if name not in self._frames:
            self._frames[name] = dataset.read_manifest(getattr(self.args, name))
        return self._frames[name]


# --- data health ----------------------------------------------------------------------------


def health(inputs: Inputs) -> dict:
    """metrics/data_health.json: flat figures of the data's state, None where a stage did not measure it."""
    m = inputs.m
    train_counts = list((m("split", "per_class.train") or {}).values())
    rates = m("clean", "flag_rates") or {}
    patch = patches.read_patches(inputs.args.labels)
    multi = patch[patch["annotators"].fillna(0) >= 2] if len(patch) else patch
    by_origin = m("assemble", "by_origin") or {}
    total = sum(by_origin.values())
    r = lambda v: None if v is None else round(float(v), 6)  # noqa: E731
    return {
        "samples_in": m("ingest", "in"),
        "quarantined": m("ingest", "quarantined"),
        "quarantined_fraction": m("ingest", "quarantined_fraction"),
        "cross_split_leaks": (m("split", "cross_split_exact") or 0) + (m("split", "cross_split_near_duplicates") or 0),
        "duplicate_sets": m("split", "duplicates.sets"),
        "duplicates_removed": m("split", "removed"),
        "duplicate_label_conflicts": m("split", "duplicates.label_conflicts"),
        "label_issue_rate": rates.get("label"),
        "outlier_rate": rates.get("outlier"),
        "near_duplicate_rate": rates.get("near_duplicate"),
        "image_issue_rates": {k: v for k, v in rates.items() if k in IMAGE_ISSUES} or None,
        "estimated_noise_rate": m("clean", "estimated_noise_rate"),
        "needs_review": m("clean", "needs_review"),
        "oof_accuracy": m("oof", "oof_accuracy"),
        "imbalance_ratio": r(max(train_counts) / max(1, min(train_counts))) if train_counts else None,
        "human_labels": int(len(patch)),
        "annotator_agreement": r(multi["agreement"].astype(float).mean()) if len(multi) else None,
        "unlabeled_pool": m("split", "unlabeled"),
        "pseudo_labels": m("pseudo", "kept"),
        "pseudo_coverage": m("pseudo", "coverage"),
        "pseudo_estimated_precision": m("pseudo", "estimated_precision"),
        "samples_by_origin": by_origin,
        "training_set": total,
        "derived_share": r((total - by_origin.get(schema.REAL, 0)) / total) if total else None,
    }


# --- pictures -------------------------------------------------------------------------------


def _plot_images(inputs: Inputs, name: str | None) -> list[str]:
    folder = inputs.plots.get(name) if name else None
    if folder is None or not folder.is_dir():
        return []
    caption = "<figcaption>plots/{}/{}</figcaption>"
    return [
        f"<figure>{page.img_tag(p.read_bytes(), 'image/png', p.name)}{caption.format(name, p.name)}</figure>"
        for p in sorted(folder.glob("*.png"))
    ]


# --- sections -------------------------------------------------------------------------------


def _figures(inputs: Inputs, stem: str, keys: list[tuple]) -> str:
    """The key figures of a stage: (label, dotted metric path), those the metrics have."""
    cells = [(label, inputs.m(stem, path)) for label, path in keys if inputs.m(stem, path) is not None]
    return "".join(
        f'<div class="kpi"><b>{page.fmt(v)}</b><span>{html.escape(label)}</span></div>' for label, v in cells
    )


def _ingest(inputs: Inputs) -> list[str]:
    out = []
    q = pd.read_csv(Path(inputs.args.ingest) / "quarantine.csv", dtype=str, keep_default_na=False)
    if len(q):
        reasons = q["reason"].value_counts().sort_index()
        out.append("<h3>Quarantine by reason</h3>" + page.table(list(reasons.items()), ("reason", "files")))
        shown = q.sort_values(["reason", schema.PATH]).groupby("reason").head(3)
        out.append(
            "<h3>Examples</h3>"
            + page.table([(r.reason, r.path, r.detail) for r in shown.itertuples()], ("reason", "file", "detail"))
        )
    else:
        out.append("<p>Nothing quarantined: every input decoded and passed the checks.</p>")
    skipped = inputs.m("ingest", "skipped_by_extension") or {}
    if skipped:
        out.append(
            "<h3>Files skipped beside the images (not an image format, by extension)</h3>"
            + page.table(list(skipped.items()), ("extension", "files"))
        )
    return out


def _split(inputs: Inputs) -> list[str]:
    per = inputs.m("split", "per_class") or {}
    splits = [s for s in ("train", "val", "test") if per.get(s)]
    if not splits:
        return []
    classes = list(per[splits[0]])
    chart = page.figure(
        page.bars(classes, {s: [per[s].get(c, 0) for c in classes] for s in splits}, "samples"), 6.5, 3.0
    )
    return [f"<h3>Class balance by split</h3>{chart}"]


def _clean(inputs: Inputs) -> list[str]:
    df, classes = inputs.frame("clean")
    n = inputs.params.report.examples
    out = []
    issues = df.iloc[:0]  # no label detector configured: none
    if schema.IS_LABEL_ISSUE in df:
        issues = df[df[schema.IS_LABEL_ISSUE].fillna(False).astype(bool)].sort_values(["label_score", schema.SAMPLE_ID])
    if len(issues):
        rows = [(r.sample_id, r.split, r.label, r.suggested_label, r.label_score) for r in issues.head(n).itertuples()]
        out.append(
            f"<h3>Label issues: given vs suggested (the {len(rows)} least likely labels)</h3>"
            + page.table(rows, ("sample", "split", "given", "suggested", "label quality"))
        )
    if "is_outlier_issue" in df:
        outliers = df[df["is_outlier_issue"].fillna(False).astype(bool)].sort_values(
            ["outlier_score", schema.SAMPLE_ID]
        )
        caps = [f"{r.label}\n{r.outlier_score:.3g}" for r in outliers.itertuples()]
        out.append("<h3>Outliers (lowest outlier score first)</h3>" + page.thumbs(outliers, caps, "outliers", n))
    return out + _image_quality(df, n)


def _image_quality(df: pd.DataFrame, n: int) -> list[str]:
    """The image-quality issues (measured by ingest on the originals): a count per type, and a
    gallery of each type's most severe images with the original's size."""
    kinds = [k for k in IMAGE_ISSUES if f"is_{k}_issue" in df]
    if not kinds:
        return []
    flags = {k: df[f"is_{k}_issue"].fillna(False).astype(bool) for k in kinds}
    rows = [(k, int(f.sum()), f"{f.mean():.2%}") for k, f in flags.items()]
    out = [
        f"<h3>Image quality ({len(df)} images, every split and the pool)</h3>"
        + page.table(rows, ("issue", "images", "rate"))
    ]
    for k, f in flags.items():
        if f.any():
            worst = df[f].sort_values([f"{k}_score", schema.SAMPLE_ID])
            label = worst[schema.LABEL].fillna("-").to_numpy()
            size = [f"{w:.0f}x{h:.0f}" for w, h in zip(worst["quality_width"], worst["quality_height"])]
            caps = [f"{a}\n{b} {c:.3g}" for a, b, c in zip(label, size, worst[f"{k}_score"])]
            out.append(
                f"<h4>{k} (most severe first: label, original size, score)</h4>" + page.thumbs(worst, caps, k, n)
            )
    return out


def _embed(inputs: Inputs) -> list[str]:
    """The backbone's space: a 2-D PCA map coloured by label with clean's flags marked, and each
    flagged sample beside its nearest labeled neighbours, so a person sees why it was flagged."""
    if inputs.m("embed", "backbone") is None:
        return ["<p>No backbone (<code>backbone.name: null</code>): the models learn from scratch.</p>"]
    from sklearn.decomposition import PCA

    df, classes = inputs.frame("clean")
    df = df.reset_index(drop=True)
    z = artifacts.read_embeddings(inputs.args.embed, df[schema.SAMPLE_ID])
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    xy = PCA(2, random_state=0).fit_transform(z)
    flagged = (
        df[schema.IS_LABEL_ISSUE].fillna(False).astype(bool).to_numpy() if schema.IS_LABEL_ISSUE in df else df.index < 0
    )
    labeled = df[schema.LABEL_ID].to_numpy() >= 0

    def draw(ax):
        for k, name in enumerate(classes):
            rows = df[schema.LABEL_ID].to_numpy() == k
            ax.scatter(xy[rows, 0], xy[rows, 1], s=4, alpha=0.5, label=name)
        ax.scatter(xy[~labeled, 0], xy[~labeled, 1], s=3, c="lightgrey", label="unlabeled")
        ax.scatter(xy[flagged, 0], xy[flagged, 1], s=30, facecolors="none", edgecolors="black", label="label issue")
        ax.set_xticks([]), ax.set_yticks([])
        ax.legend(fontsize=6, markerscale=2, loc="best", ncol=2)

    out = [f"<h3>The backbone's space (PCA of the features; circled: label issues)</h3>{page.figure(draw, 6.5, 4.5)}"]
    n = min(inputs.params.report.examples, int(flagged.sum()))
    if n:
        pool = np.flatnonzero(labeled & ~flagged)
        rows, caps = [], []
        for i in np.flatnonzero(flagged)[:n]:
            near = pool[np.argsort(-(z[pool] @ z[i]), kind="stable")[:7]]
            rows += [i, *near]
            caps += [f"flagged: {df.at[i, schema.LABEL]}", *(f"{df.at[j, schema.LABEL]}" for j in near)]
        title = "each row: a flagged sample (its given label), then its 7 nearest labeled neighbours"
        out.append(
            "<h3>Label issues beside their nearest neighbours</h3>" + page.thumbs(df.iloc[rows], caps, title, 8 * n)
        )
    return out


def _pseudo(inputs: Inputs) -> list[str]:
    rounds = inputs.m("pseudo", "rounds") or []
    if not rounds:
        return ["<p>No unlabeled pool (ingest.unlabeled_path), so no pseudo-labels.</p>"]
    rows = [
        (
            r["round"],
            r["teacher"],
            r["kept"],
            r["coverage"],
            r.get("estimated_precision"),
            r.get("precision"),
            ", ".join(f"{k} {v}" for k, v in r["dropped"].items() if v),
        )
        for r in rounds
    ]
    out = [
        page.table(
            rows, ("round", "teacher", "kept", "coverage", "est. precision (val)", "precision (truth)", "dropped")
        )
    ]
    df, classes = inputs.frame("pseudo")
    if len(df):
        pool, _ = inputs.frame("clean")
        parents = pool.set_index(schema.SAMPLE_ID).loc[df[schema.PARENT_ID]].reset_index()
        order = np.lexsort((df[schema.SAMPLE_ID].to_numpy(), -df["confidence"].to_numpy()))
        step = max(1, len(order) // inputs.params.report.examples)  # from the most to the least confident
        pick = order[::step][: inputs.params.report.examples]
        caps = [f"{df[schema.LABEL].iloc[i]}\n{df['confidence'].iloc[i]:.2f}" for i in pick]
        out.append(
            "<h3>Pseudo-labels, most to least confident</h3>" + page.thumbs(parents.iloc[pick], caps, "", len(pick))
        )
        per = rounds[-1]["per_class"]
        out.append(page.figure(page.bars(classes, {"pseudo-labels": per}, "samples"), 6.5, 2.6))
    return out


def _policy(inputs: Inputs) -> list[str]:
    path = Path(inputs.args.policy)
    return [f"<h3>Learned policy ({path})</h3><pre>{html.escape(path.read_text())}</pre>"] if path.is_file() else []


def _synthesize(inputs: Inputs) -> list[str]:
    rejected = inputs.m("synthesize", "rejected_by_reason") or {}
    verdict = inputs.m("synthesize", "verdict")
    rows = [("verdict", verdict), ("reason", inputs.m("synthesize", "verdict_reason") or "–")]
    return ["<h3>Gate</h3>" + page.table(rows + [(f"rejected: {k}", v) for k, v in rejected.items()])]


def _assemble(inputs: Inputs) -> list[str]:
    by = inputs.m("assemble", "by_origin") or {}
    out = (
        [page.figure(page.bars(list(by), {"samples": list(by.values())}, "samples in the training set"), 5, 2.6)]
        if by
        else []
    )
    if unused := inputs.m("assemble", "not_used"):
        made = ", ".join(f"{n} {origin}" for origin, n in unused.items())
        out.append(
            f"<p>Made but not trained on ({html.escape(made)}): <code>assemble.use</code> leaves them out, because the "
            "ablation found they cost accuracy at the default budget; their galleries are above.</p>"
        )
    return out


def _train(inputs: Inputs) -> list[str]:
    path = inputs.plots.get("train", Path("-")) / "curves.csv"
    if not path.is_file():
        return []
    h = pd.read_csv(path)

    def draw(ax):
        ax.plot(h["epoch"], h["train_loss"], label="train loss")
        if "val_loss" in h:
            ax.plot(h["epoch"], h["val_loss"], label="val loss")
        best = inputs.m("train", "best_epoch")
        if best:
            ax.axvline(best, color="grey", ls="--", lw=0.8, label=f"best epoch {best}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (cross-entropy)")
        if "val_accuracy" in h:
            twin = ax.twinx()
            twin.plot(h["epoch"], h["val_accuracy"], color="tab:green", label="val accuracy")
            twin.set_ylabel("val accuracy")
            twin.legend(loc="center right")
        ax.legend(loc="upper right")

    return [f"<h3>Training curves</h3>{page.figure(draw)}"]


def _evaluate(inputs: Inputs) -> list[str]:
    folder = inputs.plots.get("evaluate", Path("-"))
    out = []
    if (folder / "confusion.csv").is_file():
        c = pd.read_csv(folder / "confusion.csv", dtype=str)
        names = sorted(set(c["actual"]) | set(c["predicted"]))
        cm = pd.crosstab(c["actual"], c["predicted"]).reindex(index=names, columns=names, fill_value=0).to_numpy()

        def draw(ax):
            ax.imshow(cm, cmap="Blues")
            for (i, j), v in np.ndenumerate(cm):
                if v:
                    ax.text(
                        j, i, str(v), ha="center", va="center", fontsize=6, color="white" if v > cm.max() / 2 else "k"
                    )
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
            ax.set_yticks(range(len(names)), names)
            ax.set_xlabel("predicted class")
            ax.set_ylabel("true class")
            ax.grid(False)

        out.append(f"<h3>Confusion matrix (test)</h3>{page.figure(draw, 5.0, 4.6)}")
    if (folder / "calibration.csv").is_file():
        t, fitted = inputs.m("evaluate", "temperature.t"), inputs.m("evaluate", "temperature.fitted")
        curves = [("calibration.csv", "raw")] + [("calibration_temperature.csv", f"T = {t:g}")] * bool(fitted)

        def draw(ax):
            ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="ideal (accuracy = confidence)")
            for f, label in curves:
                if (folder / f).is_file():
                    b = pd.read_csv(folder / f)
                    name = f"ECE {inputs.m('evaluate', 'ece' if f == 'calibration.csv' else 'temperature.ece'):.4f}"
                    ax.plot(b["confidence"], b["accuracy"], marker="o", ms=3, label=f"{label} ({name})")
            ax.set_xlabel("mean confidence in the bin")
            ax.set_ylabel("accuracy in the bin")
            ax.set_title("temperature fitted on val" if fitted else "no temperature: val has no error to fit on")
            ax.legend(loc="upper left")

        out.append(f"<h3>Calibration (reliability diagram)</h3>{page.figure(draw, 4.6, 4.0)}")
    if (folder / "robustness.csv").is_file():
        r = pd.read_csv(folder / "robustness.csv")

        def draw(ax):
            for col in (c for c in r.columns if c != "eps"):
                ax.plot(r["eps"], r[col], marker="o", ms=3, label=col)
            ax.set_xlabel("attack eps (L-inf, pixels in [0, 1])")
            ax.set_ylabel("test accuracy")
            ax.legend()

        out.append(f"<h3>Robustness vs eps</h3>{page.figure(draw)}")
    per = inputs.m("evaluate", "per_class") or {}
    rows = [(c, v["precision"], v["recall"], v["f1"], v["support"]) for c, v in per.items()]
    if rows:
        out.append("<h3>Per class (test)</h3>" + page.table(rows, ("class", "precision", "recall", "F1", "support")))
    return out


KEY_FIGURES = {
    "ingest": [
        ("images in", "in"),
        ("kept", "kept"),
        ("quarantined", "quarantined"),
        ("unlabeled", "unlabeled"),
        ("other files skipped", "skipped"),
    ],
    "split": [
        ("train", "train"),
        ("val", "val"),
        ("test", "test"),
        ("pool", "unlabeled"),
        ("duplicate sets", "duplicates.sets"),
        ("removed", "removed"),
        ("cross-split exact", "cross_split_exact"),
        ("cross-split near", "cross_split_near_duplicates"),
    ],
    "oof": [("out-of-fold accuracy", "oof_accuracy"), ("folds", "folds"), ("samples", "n_oof")],
    "clean": [
        ("flags trusted (oof accuracy >= clean.min_oof_accuracy)", "oof_trusted"),
        ("label issue rate", "flag_rates.label"),
        ("outlier rate", "flag_rates.outlier"),
        ("needs review", "needs_review"),
        ("action", "action"),
        ("removed", "removed"),
        ("relabeled", "relabeled"),
        ("human labels applied", "patches.applied"),
    ],
    "pseudo": [("pool", "pool"), ("kept", "kept"), ("coverage", "coverage"), ("est. precision", "estimated_precision")],
    "mine": [
        ("easy", "categories.easy"),
        ("ambiguous", "categories.ambiguous"),
        ("hard to learn", "categories.hard-to-learn"),
        ("max weight", "weight_max"),
    ],
    "policy-search": [("sub-policies", "sub_policies"), ("candidates", "candidates"), ("change", "change_kept")],
    "augment": [("copies", "augmented"), ("policy", "policy"), ("mode", "mode")],
    "adversarial": [("examples", "kept"), ("attack", "attack"), ("eps", "eps"), ("flip rate", "flip_rate")],
    "synthesize": [
        ("admitted", "admitted"),
        ("drawn", "drawn"),
        ("verdict", "verdict"),
        ("TSTR val accuracy", "tstr_val_accuracy"),
        ("FID (admitted)", "quality.admitted.fid"),
    ],
    "assemble": [("training set", "total")],
    "train": [("val accuracy", "val_accuracy"), ("best epoch", "best_epoch"), ("epochs run", "epochs_run")],
    "evaluate": [
        ("test accuracy", "accuracy"),
        ("macro F1", "macro_f1"),
        ("ECE", "ece"),
        ("ECE, temperature-scaled", "temperature.ece"),
        ("PGD eps 0.1", ("robustness", "pgd_eps0.1")),
        ("test samples", "n_test"),
    ],
}
EXTRA = {
    "ingest": _ingest,
    "embed": _embed,
    "split": _split,
    "clean": _clean,
    "pseudo": _pseudo,
    "policy-search": _policy,
    "synthesize": _synthesize,
    "assemble": _assemble,
    "train": _train,
    "evaluate": _evaluate,
}


def _section(inputs: Inputs, stage: str, stem: str, plots: str | None) -> str:
    metrics = inputs.metrics.get(stem, {})
    if metrics.get("enabled") is False:
        body = f"<p>Disabled (<code>{stem}.enabled: false</code>).</p>"
    else:
        body = f'<div class="kpis">{_figures(inputs, stem, KEY_FIGURES.get(stage, []))}</div>'
        body += "".join(EXTRA[stage](inputs) if stage in EXTRA else [])
        body += "".join(_plot_images(inputs, plots))
    every = page.table([(k, v) for k, v in page.flat(metrics)], ("metric", "value")) if metrics else "<p>no metrics</p>"
    body += f"<details><summary>all metrics (metrics/{stem}.json)</summary>{every}</details>"
    return f'<section id="stage-{stage}"><h2>{stage}</h2>{body}</section>'


def _checks(inputs: Inputs) -> list[tuple[str, str, bool]]:
    """(check, the figures, passed) for the counts that must add up and the lineage of the training set."""
    m = inputs.m
    ing = (m("ingest", "in"), m("ingest", "kept"), m("ingest", "quarantined"))
    split = [m("split", k) or 0 for k in ("in", "train", "val", "test", "unlabeled", "removed")]
    out = [
        ("ingest: in = kept + quarantined", "{} = {} + {}".format(*ing), ing[0] == ing[1] + ing[2]),
        ("split: in = ingest's kept", f"{split[0]} = {ing[1]}", split[0] == ing[1]),
        (
            "split: in = train + val + test + pool + removed",
            "{} = {} + {} + {} + {} + {}".format(*split),
            split[0] == sum(split[1:]),
        ),
    ]
    train, _ = inputs.frame("assemble")
    samples, _ = inputs.frame("split")
    allowed = {
        o: set(samples.loc[samples[schema.SPLIT] == (schema.POOL if o == "pseudo" else "train"), schema.SAMPLE_ID])
        for o in set(train[schema.ORIGIN]) - {schema.REAL}
    }
    derived = train[(train[schema.ORIGIN] != schema.REAL) & train[schema.PARENT_ID].notna()]  # synthetic: no parent
    bad = sum(pid not in allowed[o] for o, pid in zip(derived[schema.ORIGIN], derived[schema.PARENT_ID]))
    real_ok = bool(train.loc[train[schema.ORIGIN] == schema.REAL, schema.SPLIT].eq("train").all())
    out.append(
        ("assemble: real samples are all train", f"{int((train[schema.ORIGIN] == schema.REAL).sum())} real", real_ok)
    )
    out.append(
        (
            "assemble: each derived sample's parent is a train (pseudo: pool) sample",
            f"{bad} of {len(derived)} not",
            bad == 0,
        )
    )
    return out


def _card(inputs: Inputs) -> str:
    p = inputs.params.ingest
    src = [("source", p.source), ("path", p.path or "(built in)"), ("unlabeled pool", p.unlabeled_path or "none")]
    src += [("classes", inputs.m("ingest", "classes")), ("image size", inputs.m("ingest", "image_size"))]
    src += [("channels", inputs.m("ingest", "channels"))]
    splits = [
        (s, inputs.m("split", s)) for s in ("train", "val", "test", "unlabeled") if inputs.m("split", s) is not None
    ]
    origin = list((inputs.m("assemble", "by_origin") or {}).items())
    checks = "".join(
        f'<tr class="{"ok" if ok else "bad"}"><td>{"✓" if ok else "✗"}</td><td>{html.escape(name)}</td>'
        f"<td>{html.escape(fig)}</td></tr>"
        for name, fig, ok in _checks(inputs)
    )
    per = inputs.m("ingest", "per_class") or {}
    balance = page.figure(page.bars(list(per), {"kept": list(per.values())}, "images"), 6.5, 2.6) if per else ""
    return (
        '<section id="data-card"><h2>Data card</h2><div class="cols">'
        f"<div><h3>Sources</h3>{page.table(src)}</div><div><h3>By split</h3>{page.table(splits)}</div>"
        f"<div><h3>Training set by origin</h3>{page.table(origin)}</div></div>"
        f"<h3>Class balance (kept images)</h3>{balance}"
        f"<h3>Checks</h3><table>{checks}</table></section>"
    )


def _ablation_bars(rows: list[dict]):
    """Test accuracy per row, mean +- std over seeds, with "all" as a line to compare against."""

    def draw(ax):
        names = [r["row"] for r in rows]
        mean = [r["accuracy"]["mean"] for r in rows]
        std = [r["accuracy"]["std"] for r in rows]
        ax.bar(names, mean, yerr=std, capsize=3, color=["tab:green" if n == "all" else "tab:blue" for n in names])
        ref = next((r["accuracy"]["mean"] for r in rows if r["row"] == "all"), None)
        if ref is not None:
            ax.axhline(ref, color="grey", ls="--", lw=0.8)
        lo = min(m - s for m, s in zip(mean, std))
        ax.set_ylim(max(0.0, lo - 0.01), min(1.0, max(m + s for m, s in zip(mean, std)) + 0.005))
        ax.set_ylabel("test accuracy (mean +- std over seeds)")
        ax.tick_params(axis="x", rotation=30)

    return draw


def _ablation(inputs: Inputs) -> str:
    path = Path(inputs.args.ablation)
    data = json.loads(path.read_text()) if path.is_file() else {}
    rows = data.get("rows", [])
    if not rows:
        how = "<code>python -m pipeline ablate --run</code> (or queue, run, then <code>--collect</code>)"
        body = f"<p>No ablation collected yet ({html.escape(str(path))}): {how}.</p>"
    else:
        metrics = data.get("metrics", [])
        header = ("row", "seeds", *(f"{k} (mean ± std)" for k in metrics), "Δ accuracy vs all", "beyond noise")
        table = [
            (
                r["row"],
                r["n"],
                *(f"{r[k]['mean']:.4f} ± {r[k]['std']:.4f}" if r.get(k) else "–" for k in metrics),
                r.get("delta_accuracy"),
                r.get("beyond_noise"),
            )
            for r in rows
        ]
        chart = page.figure(_ablation_bars(rows), 6.5, 3.2)
        body = page.table(table, header) + chart + f"<p>{html.escape(data.get('note', ''))}</p>"
    return f'<section id="ablation"><h2>Ablation: what each stage bought</h2>{body}</section>'


def render(inputs: Inputs) -> str:
    sections = [_section(inputs, *entry) for entry in ORDER]
    nav = " ".join(f'<a href="#stage-{s}">{s}</a>' for s, _, _ in ORDER)
    acc = inputs.m("evaluate", "accuracy")
    headline = f"test accuracy {acc:.4f}" if acc is not None else "not evaluated"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Pipeline report</title>'
        f"<style>{page.STYLE}</style></head><body><h1>Pipeline report</h1><p>{html.escape(headline)}, "
        f"{inputs.m('ingest', 'in')} images from {html.escape(inputs.params.ingest.source)}</p>"
        f'<nav><a href="#data-card">data card</a> {nav} <a href="#ablation">ablation</a></nav>'
        f"{_card(inputs)}{''.join(sections)}{_ablation(inputs)}</body></html>\n"
    )


STAGE = wiring.Stage(
    "report",
    reads=(
        wiring.Flag("--ingest", "ingest output: the quarantine list"),
        wiring.Flag("--embed", "embed output: the backbone's features"),
        wiring.Flag("--split", "split output"),
        wiring.Flag("--clean", "clean output"),
        wiring.Flag("--pseudo", "pseudo output"),
        wiring.Flag("--assemble", "assemble output"),
        wiring.Flag("--policy", "the learned policy file"),
        wiring.Flag("--labels", "the human label patch"),
        wiring.Flag("--ablation", "the ablation's results (python -m pipeline ablate --collect)"),
        wiring.Flag("--stage-metrics", "the stages' metrics files", many=True),
        wiring.Flag("--stage-plots", "the stages' plots folders", many=True),
    ),
    writes=(wiring.Flag("--out", "report folder: index.html"),),
    params=("report", "ingest.source", "ingest.path", "ingest.unlabeled_path"),
    plots=False,
)


class Result(NamedTuple):
    page: str  # report/index.html
    health: dict  # metrics/data_health.json


def run(params: StageParams, args: argparse.Namespace, metrics: dict[str, dict], plots: dict[str, Path]) -> Result:
    """The page and the data's health from the stages' metrics (by file stem), their plots folders
    (by name) and the manifests `args` names (read when a section needs one)."""
    inputs = Inputs(params, args, metrics, plots)
    return Result(render(inputs), health(inputs))


def main(params: StageParams, args: argparse.Namespace) -> None:
    metrics = {}
    for path in map(Path, args.stage_metrics):
        if not path.is_file():
            raise PipelineError(f"{path}: no such metrics file (has its stage run?)")
        metrics[path.stem] = json.loads(path.read_text())
    page, data_health = run(params, args, metrics, {Path(p).name: Path(p) for p in args.stage_plots})
    dataset.write_json(args.metrics, data_health)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".index.html.tmp"
    tmp.write_text(page)
    tmp.replace(out / "index.html")
    log.info("report: %s (%.1f MB)", out / "index.html", len(page) / 1e6)
