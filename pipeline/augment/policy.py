"""Augmentation policies as versioned data: the YAML envelope, its validation, draw and apply.

A policy file in `augment_policies/` is a YAML mapping:

    version: 1            # FORMAT_VERSION; a file of another version is refused, naming both
    kind: randaugment     # autoaugment | randaugment | trivialaugment | pipeline
    description: ...      # where it comes from
    <the kind's fields>

- `autoaugment` (Cubuk et al. 2018): `sub_policies`, each a list of `[op, probability,
  magnitude]` (two in the paper); per image one sub-policy is drawn uniformly and each of its
  ops is applied with its probability. Ops without a magnitude take `null`. A learned policy
  (`learned.yaml`, written by the policy-search stage) adds `search`: how it was found and
  each sub-policy's scores, kept as data and never read by `draw`.
- `randaugment` (Cubuk et al. 2019): `num_ops` (N) ops drawn uniformly, with replacement,
  from `ops`, each at `magnitude` (M).
- `trivialaugment` (Müller & Hutter 2021): one op drawn from `ops`, at a magnitude drawn
  uniformly from `magnitude_bins` levels spread evenly over 0..10.
- `pipeline`: `transform`, an albumentations pipeline in its own serialised form (`A.to_dict`).

The first three also name the magnitude table (`space`: `standard` or `wide`, see ops.py) and
`fill`, the grey level of pixels that geometric ops and Cutout uncover.

`load` validates: a wrong key or value fails naming it, with expected versus got. `dump` writes
the canonical text, and the shipped files are canonical, so they load and save back byte for
byte. `load_path(..., num_ops=, magnitude=)` overrides a RandAugment policy's N and M (the
`augment.num_ops` / `augment.magnitude` params). Randomness is drawn apart from its
application: `draw(policy, rng, shape)` returns the ops with their magnitudes and parameters;
`apply(img, drawn)` applies them. What `apply` actually applied (for `pipeline`, as
albumentations reports it) is what the augment stage logs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Union

import numpy as np
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.augment import ops
from pipeline.core.errors import PipelineError
from pipeline.core.params import read_yaml
from pipeline.core.registry import Registry, describe

FORMAT_VERSION = 1
KINDS = ("autoaugment", "randaugment", "trivialaugment", "pipeline")

OpName = Annotated[str, AfterValidator(ops.check_op)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Magnitude = Annotated[Union[int, float], Field(ge=0, le=10)]


class Drawn(NamedTuple):
    """One op as drawn for one image: its magnitude (0..10, None if it has none) and parameters."""

    op: str
    magnitude: float | None
    params: dict


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = FORMAT_VERSION
    description: str = ""


class _OpPolicy(_Policy):
    space: Literal["standard", "wide"] = "standard"
    fill: int = Field(0, ge=0, le=255)


class AutoAugment(_OpPolicy):
    kind: Literal["autoaugment"]
    sub_policies: Annotated[
        list[Annotated[list[tuple[OpName, Probability, Magnitude | None]], Field(min_length=1)]], Field(min_length=1)
    ]
    search: dict[str, Any] | None = None  # a learned policy's search record (not used to draw)

    @model_validator(mode="after")
    def _magnitudes(self) -> AutoAugment:
        for i, sub in enumerate(self.sub_policies):
            for op, _, magnitude in sub:
                if ops.has_magnitude(op, self.space) != (magnitude is not None):
                    want = "a magnitude 0..10" if ops.has_magnitude(op, self.space) else "null (it has no magnitude)"
                    raise ValueError(f"sub_policies[{i}]: expected {want} for {op}, got {magnitude!r}")
        return self


class RandAugment(_OpPolicy):
    kind: Literal["randaugment"]
    num_ops: int = Field(ge=1, le=10)
    magnitude: Magnitude
    ops: Annotated[list[OpName], Field(min_length=1)]


class TrivialAugment(_OpPolicy):
    kind: Literal["trivialaugment"]
    magnitude_bins: int = Field(31, ge=2)
    ops: Annotated[list[OpName], Field(min_length=1)]


class Pipeline(_Policy):
    kind: Literal["pipeline"]
    transform: dict[str, Any]
    _compose: Any = PrivateAttr(None)

    @field_validator("transform")
    @classmethod
    def _loads(cls, v: dict) -> dict:
        import warnings

        import albumentations as A

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a missing `p` etc.: the error below says enough
                A.from_dict(v)
        except Exception as e:  # albumentations raises many types for a bad dict
            raise ValueError(f"expected an albumentations pipeline in A.to_dict form, got an error: {e}") from None
        return v

    def compose(self):
        """The albumentations pipeline, built once; it reports the transforms it applied."""
        if self._compose is None:
            import albumentations as A

            built = A.from_dict(self.transform)
            if not isinstance(built, A.Compose):
                built = A.Compose([built])
            self._compose = A.Compose(built.transforms, p=built.p, save_applied_params=True)
        return self._compose


Policy = Annotated[Union[AutoAugment, RandAugment, TrivialAugment, Pipeline], Field(discriminator="kind")]
_ADAPTER = TypeAdapter(Policy)
KIND_MODELS: Registry[type[BaseModel]] = Registry(
    "policy kind", zip(KINDS, (AutoAugment, RandAugment, TrivialAugment, Pipeline))
)


def parse(raw: object, origin: str = "policy") -> AutoAugment | RandAugment | TrivialAugment | Pipeline:
    if not isinstance(raw, dict):
        raise PipelineError(f"{origin}: expected a YAML mapping with version and kind, got {type(raw).__name__}")
    if raw.get("version") != FORMAT_VERSION:
        raise PipelineError(f"{origin}: version: expected {FORMAT_VERSION}, got {raw.get('version')!r}")
    if raw.get("kind") not in KINDS:
        raise PipelineError(f"{origin}: kind: expected one of {', '.join(KINDS)}, got {raw.get('kind')!r}")
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as e:
        raise PipelineError(f"{origin}: {describe(e, hidden=lambda part: part in KINDS, whole='policy')}") from None


def load(path: str | Path):
    return parse(read_yaml(path, "policy file"), str(path))


def load_path(path: str | Path, **overrides):
    """(policy name, policy) of the policy file at `path` (the name is the file's stem).

    `overrides` (the `augment` params `num_ops`, `magnitude`; None: the file's value) replace
    the policy's fields of those names; a policy whose kind has no such field is refused.
    """
    path = Path(path)
    if not path.is_file():
        known = ", ".join(str(p) for p in sorted(path.parent.glob("*.yaml"))) or "none"
        raise PipelineError(f"augment.policy: {path}: no such policy file (found: {known})")
    return path.stem, override(load(path), path.name, **overrides)


def override(policy, origin: str = "policy", **values):
    """`policy` with the fields in `values` replaced and validated again; None values are skipped."""
    values = {k: v for k, v in values.items() if v is not None}
    for key, v in values.items():
        if key not in type(policy).model_fields:
            having = [kind for kind, model in KIND_MODELS.items() if key in model.model_fields] or ["none"]
            raise PipelineError(
                f"augment.{key}: expected null for {origin} (kind {policy.kind} has no {key}; "
                f"only {', '.join(having)} has), got {v!r}"
            )
    if not values:
        return policy
    return parse({**policy.model_dump(mode="json"), **values}, origin)


class _Flow(list):
    """A list YAML writes on one line: a sub-policy, an op list."""


class _FlowMap(dict):
    """A mapping YAML writes on one line: a row of search scores."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Flow, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
_Dumper.add_representer(_FlowMap, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v.items(), flow_style=True))


def _leaves_flow(v):
    """Lists and mappings of scalars on one line each; deeper ones in block style."""
    if isinstance(v, dict):
        inner = {k: _leaves_flow(x) for k, x in v.items()}
        return _FlowMap(inner) if not any(isinstance(x, (dict, list)) for x in v.values()) else inner
    if isinstance(v, list):
        return _Flow(v) if not any(isinstance(x, (dict, list)) for x in v) else [_leaves_flow(x) for x in v]
    return v


def dump(policy) -> str:
    """The canonical YAML text of `policy` (what `load` of that text gives back)."""
    data = policy.model_dump(mode="json")
    head = {k: data.pop(k) for k in ("version", "kind", "description")}
    if "sub_policies" in data:
        data["sub_policies"] = [_Flow(_Flow(op) for op in sub) for sub in data["sub_policies"]]
    if "ops" in data:
        data["ops"] = _Flow(data["ops"])
    if "search" in data:  # last, and only in learned policies
        search = data.pop("search")
        if search is not None:
            data["search"] = _leaves_flow(search)
    return yaml.dump(
        {**head, **data}, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
    )


def save(policy, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dump(policy))
    os.replace(tmp, path)


def draw(policy, rng: np.random.Generator, shape: tuple[int, ...], pool_size: int = 0) -> list[Drawn]:
    """The ops one image gets, with magnitudes and every random parameter drawn from `rng`.

    `shape` is the image's (H, W, C); `pool_size` the number of partner images SamplePairing
    may draw from (the index it draws is into the pool given to `apply`).
    """
    if isinstance(policy, Pipeline):
        return [Drawn("pipeline", None, {"seed": int(rng.integers(2**32))})]

    def one(op: str, magnitude: float | None) -> Drawn:
        m = magnitude if ops.has_magnitude(op, policy.space) else None
        return Drawn(op, m, ops.draw(op, m, rng, shape, policy.space, policy.fill, pool_size))

    if isinstance(policy, AutoAugment):
        sub = policy.sub_policies[int(rng.integers(len(policy.sub_policies)))]
        applied = [(op, m) for op, p, m in sub if rng.random() < p]
        return [one(op, m) for op, m in applied]
    if isinstance(policy, RandAugment):
        return [one(policy.ops[int(rng.integers(len(policy.ops)))], policy.magnitude) for _ in range(policy.num_ops)]
    op = policy.ops[int(rng.integers(len(policy.ops)))]
    return [one(op, 10 * int(rng.integers(policy.magnitude_bins)) / (policy.magnitude_bins - 1))]


def apply(
    img: np.ndarray,
    drawn: list[Drawn],
    *,
    pool: np.ndarray | None = None,
    policy=None,
    trace: list[Drawn] | None = None,
) -> np.ndarray:
    """Apply drawn ops in order to one uint8 (H, W, C) image; nothing random happens here.

    `pool` holds SamplePairing's partner images; `policy` is needed for a `pipeline` draw.
    What was applied is appended to `trace` when one is given.
    """
    for d in drawn:
        if d.op == "pipeline":
            if not isinstance(policy, Pipeline):
                raise ValueError("a drawn 'pipeline' op needs its Pipeline policy")
            compose = policy.compose()
            compose.set_random_seed(d.params["seed"])
            out = compose(image=np.ascontiguousarray(img))
            img = out["image"]
            if trace is not None:
                trace.extend(Drawn(name, None, _jsonable(p)) for name, p in out["applied_transforms"])
        else:
            img = ops.apply(img, d.op, d.params, pool)
            if trace is not None:
                trace.append(d)
    return img


def _jsonable(params: dict) -> dict:
    """The scalar parameters albumentations reports (its matrices and noise maps are left out)."""
    out = {}
    for k, v in params.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (bool, int, str)) or (isinstance(v, float) and np.isfinite(v)):
            out[k] = round(v, 6) if isinstance(v, float) else v
    out.pop("shape", None)
    return out


def record(trace: list[Drawn]) -> str:
    """The JSON the `ops` column holds: what was applied, in order."""
    return json.dumps(
        [{"op": d.op, "magnitude": d.magnitude, "params": d.params} for d in trace],
        separators=(",", ":"),
        sort_keys=True,
    )


def trains_online(cfg, n_train: int) -> bool:
    """Whether train applies the policy per batch (`cfg`: params' augment section) to a training
    set of `n_train` labeled images: `mode` online, or auto below `online_below`."""
    return cfg.enabled and (cfg.mode == "online" or cfg.mode == "auto" and n_train < cfg.online_below)
