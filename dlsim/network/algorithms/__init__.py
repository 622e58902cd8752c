"""Collective algorithms as small lowering functions: a collective becomes phases of flows.

One module per algorithm; each registers itself (``base.Algorithm``) under the name a
scenario gives it, with the ops it runs. Every module of this package is imported here, so
a new algorithm is a new module and nothing else. The names below are the helpers the rest
of dlsim uses; the lowering functions live in their algorithm's module.
"""

import importlib
import pkgutil

from dlsim.network.algorithms.base import (
    ALGORITHM,
    Algorithm,
    Lowering,
    Phase,
    algorithms,
    algorithms_for,
    busbw_factor,
    check_algorithm,
    collective_ops,
    lower,
    lowering,
    merge_phases,
    needs_peers,
)

for _module in pkgutil.iter_modules(__path__):  # in file-name order, so registration is too
    importlib.import_module(f"{__name__}.{_module.name}")

from dlsim.network.algorithms.ps import dedicated_hosts, server_ranks  # noqa: E402

__all__ = ["ALGORITHM", "Algorithm", "Lowering", "Phase", "algorithms", "algorithms_for",
           "busbw_factor", "check_algorithm", "collective_ops", "dedicated_hosts", "lower",
           "lowering", "merge_phases", "needs_peers", "server_ranks"]
