"""Algorithms and samplers from outside the package.

A module that registers an algorithm or a sampler (``register_algorithm`` /
``register_sampler`` from :mod:`hpod.server.algorithms.base`) is loaded at server start when
it is named in the ``HPOD_PLUGINS`` environment variable (comma-separated module names on the
server's Python path) or installed with an entry point in the ``hpod.algorithms`` group. Its
names can then be used in a study spec like the built-in ones.
"""

from __future__ import annotations

import importlib
import logging
import os
from importlib.metadata import entry_points

log = logging.getLogger("hpod.server")

ENV = "HPOD_PLUGINS"
GROUP = "hpod.algorithms"


def load_plugins() -> list[str]:
    """Import every plugin module; returns their names. A module that fails to import stops
    the server with the reason, rather than studies failing later for a missing name."""
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    loaded = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:
            raise SystemExit(f"{ENV}: cannot import plugin module {name!r}: {e}") from e
        loaded.append(name)
    for ep in entry_points(group=GROUP):
        try:
            ep.load()
        except Exception as e:
            raise SystemExit(f"entry point {ep.name!r} ({GROUP}): cannot load: {e}") from e
        loaded.append(ep.value)
    if loaded:
        log.info("algorithm plugins loaded: %s", ", ".join(loaded))
    return loaded
