"""hpod: hyperparameter optimization as a service.

The distribution maps the repository's top-level folders into this namespace:
``hpod.server`` is ``server/``, ``hpod.client`` is ``client/``, ``hpod.trainers`` is
``trainers/`` and ``hpod.v1`` holds the generated wire types from ``proto/hpod/v1``.
"""

__version__ = "0.1.0"
