"""`python -m pipeline label push|pull|serve`: the human loop's command line.

The server and token come from LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY only (never a flag,
never params.yaml), so they cannot land in shell history, params or DVC files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pipeline.core import schema
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.quality import select

DEFAULT_MANIFEST = "data/clean/manifest.parquet"
DEFAULT_HARDNESS = "data/mine/hardness.parquet"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars or info logs")
    p.add_argument("--retries", type=int, default=5, help="tries per request (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for an answer (default: %(default)s)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="{push,pull,serve}", required=True)
    push = sub.add_parser("push", help="send selected samples (with the model's suggestion) to a project")
    push.add_argument("--project", required=True, help="project title (created if missing)")
    push.add_argument(
        "--select",
        required=True,
        choices=sorted(select.SELECTORS),
        help="issues: label issues, lowest label_score first; hard: hardest first; "
        "random: a seeded audit sample; ids: the ones given by --ids; active: unlabeled (pool) "
        "samples most worth labeling, least certain and diverse; typical: pool samples from the parts "
        "of the data the labeled set covers least (TypiClust: for a few labels per class); badge: pool samples "
        "uncertain and diverse at once (BADGE: k-means++ over the last layer's gradient embeddings)",
    )
    push.add_argument("--limit", type=int, default=200, help="at most this many (default: %(default)s)")
    push.add_argument("--manifest", default=DEFAULT_MANIFEST, help="default: %(default)s")
    push.add_argument("--hardness", default=DEFAULT_HARDNESS, help="for --select hard (default: %(default)s)")
    push.add_argument("--ids", help="for --select ids: a file (one id a line, or CSV with sample_id) or a comma list")
    push.add_argument(
        "--score",
        default="activelab",
        choices=select.ACTIVE_SCORES,
        help="--select active: cleanlab's ActiveLab score, or the fold models' disagreement (BALD) "
        "(default: %(default)s)",
    )
    push.add_argument(
        "--diversity",
        default="kcenter",
        choices=select.DIVERSITY,
        help="--select active: how a batch is spread over the oof embeddings of the least certain: greedy "
        "k-center, or the sample nearest each centre of an uncertainty-weighted k-means (default: %(default)s)",
    )
    push.add_argument(
        "--balance",
        action="store_true",
        help="--select active: an equal share of the batch per predicted class (class-balanced active "
        "learning: a weak model's least certain samples crowd into the classes it confuses)",
    )
    push.add_argument(
        "--oof", default="data/oof", help="--select active|typical|badge: oof output, for probabilities and embeddings"
    )
    push.add_argument("--min-score", type=float, help="--select issues: label_score at least this")
    push.add_argument("--max-score", type=float, help="--select issues: label_score at most this")
    push.add_argument(
        "--split",
        action="append",
        choices=["train", "val", "test", "unlabeled"],
        help="only samples of this split (repeatable; default: all)",
    )
    push.add_argument("--seed", type=int, help="--select random (default: base.seed)")
    push.add_argument("--annotators", type=int, help="answers wanted per task (the project's overlap)")
    push.add_argument(
        "--images",
        default="auto",
        choices=["auto", "local", "upload"],
        help="local: a local-files storage (the server shares this disk); upload: send "
        "the PNGs; auto: local when the server allows it (default)",
    )
    push.add_argument("--image-dir", default=".pipeline/label-images", help="where the PNGs go (default: %(default)s)")
    push.add_argument("--document-root", help="the server's LOCAL_FILES_DOCUMENT_ROOT (default: ask it)")
    push.add_argument("--batch-size", type=int, default=1000, help="tasks per import request")
    _common(push)

    pull = sub.add_parser("pull", help="export annotations, aggregate them, write the label patch")
    pull.add_argument("--project", required=True, help="project title")
    pull.add_argument("--manifest", help=f"for current labels (default: {DEFAULT_MANIFEST} if present)")
    pull.add_argument(
        "--oof",
        default="data/oof",
        help="oof output whose out-of-fold probabilities CROWDLAB weighs (default: %(default)s, if present)",
    )
    pull.add_argument(
        "--out", default="labels/patches.csv", help="the patch, a file kept in git (default: %(default)s)"
    )
    pull.add_argument("--summary", default="metrics/labels.json", help="default: %(default)s")
    pull.add_argument(
        "--min-annotators",
        type=int,
        default=1,
        help="usable answers a sample needs to be patched (default: %(default)s)",
    )
    _common(pull)

    serve = sub.add_parser("serve", help="start a local Label Studio (own venv, 127.0.0.1 only)")
    serve.add_argument("--port", type=int, default=8080, help="default: %(default)s")
    serve.add_argument(
        "--document-root", default=".", help="folder local files are served from (default: the project folder)"
    )
    serve.add_argument("--venv", default=".venv-ls", help="Label Studio's own environment (default: %(default)s)")
    serve.add_argument("--no-install", action="store_true", help="fail instead of creating the venv")
    serve.add_argument("--detach", action="store_true", help="leave it running in the background")
    serve.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _client(args):
    from pipeline.labelstudio.client import Client, Retry

    if args.retries < 1 or args.timeout <= 0:
        raise PipelineError(f"--retries must be >= 1 and --timeout > 0, got {args.retries}, {args.timeout}")
    return Client.from_env(Retry(attempts=args.retries, read_timeout=args.timeout))


def _push(params: Params, args) -> dict:
    from pipeline.core import dataset
    from pipeline.labelstudio import push, revision

    if args.balance and args.select != "active":
        raise PipelineError(f"--balance applies to --select active, not --select {args.select}")
    manifest = Path(args.manifest)
    df, classes = dataset.read_manifest(manifest)
    manifest = manifest / dataset.MANIFEST if manifest.is_dir() else manifest
    if args.limit < 1:
        raise PipelineError(f"--limit must be >= 1, got {args.limit}")
    s = select.Selection(
        limit=args.limit,
        seed=params.base.seed if args.seed is None else args.seed,
        min_score=args.min_score,
        max_score=args.max_score,
        ids=select.read_ids(args.ids) if args.ids else [],
    )
    if args.select in ("active", "typical", "badge"):
        from pipeline.core import artifacts

        if not (Path(args.oof) / dataset.MANIFEST).exists():
            raise PipelineError(f"{args.oof}: no oof output (--select {args.select} needs it; run dvc repro)")
        oof_df, _, emb, _ = artifacts.read_oof(args.oof)
        df = artifacts.with_oof_probs(df, args.oof)
        s.score, s.diversity, s.balance = args.score, args.diversity, args.balance
        s.embeddings = (oof_df[schema.SAMPLE_ID].to_numpy(), emb)
        s.labeled = df.loc[df[schema.SPLIT] == "train", schema.SAMPLE_ID].to_numpy() if schema.SPLIT in df else None
    if args.select == "hard":
        if not Path(args.hardness).exists():
            raise PipelineError(f"{args.hardness}: no hardness table (has the mine stage run?)")
        s.hardness = pd.read_parquet(args.hardness)
    chosen = select.select(df, args.select, s, args.split)
    if chosen.empty:
        raise PipelineError(f"--select {args.select} chose no samples from {manifest}; nothing to push")
    opts = push.PushOptions(
        project=args.project,
        images=args.images,
        image_dir=Path(args.image_dir),
        document_root=args.document_root,
        annotators=args.annotators,
        batch_size=args.batch_size,
        model_version=revision.model_version(manifest),
    )
    return push.run(_client(args), chosen, classes, opts)


def _pull(args) -> dict:
    from pipeline.core import artifacts, dataset
    from pipeline.labelstudio import pull

    manifest, classes = None, None
    path = args.manifest or (DEFAULT_MANIFEST if Path(DEFAULT_MANIFEST).exists() else None)
    if path:
        manifest, classes = dataset.read_manifest(path)
        manifest = artifacts.with_oof_probs(manifest, args.oof)  # clean keeps no probabilities
    opts = pull.PullOptions(
        project=args.project,
        patches=Path(args.out),
        summary=Path(args.summary) if args.summary else None,
        min_annotators=args.min_annotators,
    )
    return pull.run(_client(args), opts, manifest, classes)[1]


def main(params: Params, args) -> None:
    if args.action == "push":
        _push(params, args)
    elif args.action == "pull":
        _pull(args)
    else:
        from pipeline.labelstudio import serve

        code = serve.serve(
            args.port, Path(args.document_root), Path(args.venv), install=not args.no_install, detach=args.detach
        )
        if code:
            raise PipelineError(f"Label Studio exited with code {code}", exit_code=code)
