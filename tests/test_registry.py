"""The one registry shape every plug-in family uses, and params' names agreeing with the registries."""

from typing import get_args

import pytest

from pipeline.augment import ops, policy
from pipeline.core import params
from pipeline.core.errors import PipelineError
from pipeline.core.registry import Registry, UnknownName
from pipeline.dedup import leakcheck
from pipeline.learn import attacks, models
from pipeline.quality import issues, select
from pipeline.sources import readers as sources
from pipeline.synthesize import generators


def test_an_unknown_name_lists_the_valid_ones_on_one_line():
    r = Registry("widget", [("a", 1), ("b", 2)])
    assert r["a"] == 1 and r.names() == ("a", "b")
    with pytest.raises(PipelineError, match=r"^unknown widget 'c'; must be one of a, b$") as e:
        r["c"]
    assert isinstance(e.value, ValueError) and isinstance(e.value, UnknownName)  # pydantic validators report it


def test_a_name_registered_twice_is_refused():
    r = Registry("widget", [("a", 1)])
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        r["a"] = 2

    class Plugin:
        name = "a"

    with pytest.raises(ValueError, match="registered twice"):
        r.register(Plugin)
    assert r["a"] == 1


@pytest.mark.parametrize(
    "registry",
    [
        sources.SOURCES, models.MODELS, attacks.ATTACKS, generators.GENERATORS, issues.REGISTRY, leakcheck.CHECKS,
        ops.KERNELS, policy.KIND_MODELS, select.SELECTORS,
    ],
    ids=lambda r: r.family,
)  # fmt: skip
def test_every_plugin_family_is_a_registry(registry):
    assert isinstance(registry, Registry) and len(registry) >= 2


@pytest.mark.parametrize(
    "names, registry",
    [
        (params.SOURCE, sources.SOURCES),
        (params.MODEL, models.MODELS),
        (params.ATTACK, attacks.ATTACKS),
        (params.GENERATOR, generators.GENERATORS),
    ],
    ids=["source", "model", "attack", "generator"],
)
def test_params_names_are_the_registries(names, registry):
    assert get_args(names) == registry.names()
