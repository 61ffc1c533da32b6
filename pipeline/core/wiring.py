"""Each stage's wiring, declared once: the paths it reads and writes and the params it reads.

A stage module holds `STAGE = wiring.Stage(...)`. From it come the stage's path flags (required,
no defaults: `dvc.yaml` is the one place paths are chosen) and the view of the params the stage
is handed, which refuses a section or key the declaration does not list. `tests/test_wiring.py`
checks `dvc.yaml` against the declarations: the cmd's flags, `deps` (the paths read plus the
files of every pipeline module the stage imports), `outs`, `metrics` and `params`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.core.params import Params


@dataclass(frozen=True)
class Flag:
    name: str  # "--clean": named for what it carries
    help: str
    many: bool = False  # any number of paths (nargs="*"; the flag itself is still required)

    @property
    def dest(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")


@dataclass(frozen=True)
class Stage:
    """`reads`: DVC deps; `writes`: cached DVC outs; `metrics` / `plots`: a `--metrics` JSON file
    (uncached) and a `--plots` folder (a cached out, so that DVC's run cache keeps the stage);
    `params`: the sections or dotted keys of params.yaml read."""

    name: str
    reads: tuple[Flag, ...]
    writes: tuple[Flag, ...]
    params: tuple[str, ...]
    metrics: bool = True
    plots: bool = True

    def flags(self) -> tuple[Flag, ...]:
        extra = (Flag("--metrics", "metrics JSON"),) * self.metrics + (Flag("--plots", "plots folder"),) * self.plots
        return self.reads + self.writes + extra

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        paths = p.add_argument_group("paths (required; dvc.yaml wires them)")
        for f in self.flags():
            paths.add_argument(f.name, dest=f.dest, required=True, nargs="*" if f.many else None, help=f.help)

    def view(self, params):
        """`params` as this stage may read it: only the declared sections and keys."""
        return View(params, self.params, self.name)


class View:
    """Read access to the declared part of a params object; anything else is a wiring error (the
    stage would read a param whose change DVC does not see)."""

    def __init__(self, params, keys: tuple[str, ...], stage: str, prefix: str = ""):
        self._params, self._keys, self._stage, self._prefix = params, keys, stage, prefix

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        key = f"{self._prefix}{name}"
        value = getattr(self._params, name)
        if any(key == k or key.startswith(f"{k}.") for k in self._keys):
            return value
        if any(k.startswith(f"{key}.") for k in self._keys):
            return View(value, self._keys, self._stage, f"{key}.")
        raise PipelineError(
            f"stage {self._stage} reads params {key}, which its STAGE declaration (and dvc.yaml) does not list"
        )

    def model_dump(self, **kwargs) -> dict:
        """The whole params, for fingerprints (evaluate's test-set ledger), never for values."""
        return self._params.model_dump(**kwargs)


# What a stage's `run` and `main` are handed: the dispatcher gives a View, tests may give Params
StageParams = Union["Params", View]
