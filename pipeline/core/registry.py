"""One shape for every plug-in family (leak checks, issue detectors, generators, attacks, models,
sources, policy kinds, ops, Label Studio selectors): a name -> plug-in mapping that refuses a
name registered twice (one plug-in would silently shadow another) and answers an unknown name
with the list of valid ones, on one line. Plug-in option models derive from `Knobs`, and
`describe` turns a pydantic error into that one line, for params, policy files and plug-ins alike.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterable, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.core.errors import PipelineError

T = TypeVar("T")


class UnknownName(PipelineError, ValueError):
    """A PipelineError (one line, non-zero exit) that pydantic validators also report as a ValueError."""


class Registry(dict, Generic[T]):
    def __init__(self, family: str, items: Iterable[tuple[str, T]] = ()):
        super().__init__()
        self.family = family  # "leak check", "model": what an error message calls a member
        for name, value in items:
            self[name] = value

    def __setitem__(self, name: str, value: T) -> None:
        if name in self:
            raise ValueError(f"{self.family} {name!r} is registered twice")
        super().__setitem__(name, value)

    def __missing__(self, name: str):
        raise UnknownName(f"unknown {self.family} {name!r}; must be one of {', '.join(self)}")

    def register(self, plugin: T) -> T:
        """Class decorator: registers `plugin` under its `name`."""
        self[plugin.name] = plugin
        return plugin

    def names(self) -> tuple[str, ...]:
        return tuple(self)


class Knobs(BaseModel):
    """A plug-in's options: strict (a misspelt knob is an error, not a silent default), frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def describe(
    e: ValidationError, prefix: str = "", hidden: Callable[[object], bool] = lambda part: False, whole: str = "value"
) -> str:
    """A pydantic error as one line: `prefix.key: expected ..., got ...` per problem, `; `-joined.
    `hidden` drops location parts that are not keys (a union's tag); `whole` names an error of no key."""
    out = []
    for err in e.errors():
        where = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "" and not hidden(p)) or whole
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            out.append(f"{where}: unknown key (check its spelling)")
        elif err["type"] == "value_error" or msg.startswith("expected"):  # our validators' own words
            out.append(f"{where}: {msg}")
        else:
            msg = msg[0].lower() + msg[1:]
            out.append(f"{where}: expected {msg.removeprefix('input should be ')}, got {err.get('input')!r}")
    return "; ".join(out)
