"""The lazy registry table and the modules' own registrations agree."""

from hpod.server import algorithms
from hpod.server.algorithms.base import ALGORITHMS, SAMPLERS


def _ours(registry: dict) -> set[str]:
    """Names registered by the package itself (tests may register helpers of their own)."""
    return {name for name, factory in registry.items()
            if getattr(factory, "__module__", "").startswith("hpod.server.algorithms")}


def test_every_registered_name_is_in_the_table_and_back():
    algorithms.load_all()
    assert _ours(ALGORITHMS) == set(algorithms.MODULES)
    assert _ours(SAMPLERS) == set(algorithms.SAMPLER_MODULES)
