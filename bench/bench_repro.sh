#!/usr/bin/env bash
# Wall time of the full default `dvc repro` and of a no-op `dvc repro`, in a scratch copy
# of the project (so the workspace's own outputs and run cache are not reused).
# Usage: bash bench/bench_repro.sh   (run from the project root, venv on PATH or in .venv)
set -euo pipefail
root=$(pwd)
export PATH="$root/.venv/bin:$PATH" PIPELINE_QUIET=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r pipeline augment_policies dvc.yaml params.yaml .dvcignore .gitignore "$work"/
mkdir -p "$work/.dvc" "$work/metrics" && cp .dvc/config "$work/.dvc/" && cp -r labels "$work/"
cp metrics/ablation.json "$work/metrics/"  # the report reads it (an empty table until ablate --collect)
cd "$work"
git init -q && git add -A && git -c user.name=b -c user.email=b@b commit -qm bench
now() { date +%s.%N; }
t0=$(now); dvc repro -q >/dev/null; t1=$(now)
dvc repro -q >/dev/null; t2=$(now)
python - "$t0" "$t1" "$t2" <<'PY'
import json, sys
t0, t1, t2 = map(float, sys.argv[1:])
acc = json.load(open("metrics/evaluate.json"))["accuracy"]
print(f"full dvc repro: {t1 - t0:6.1f} s   (test accuracy {acc:.4f})")
print(f"no-op dvc repro: {t2 - t1:5.2f} s")
PY
