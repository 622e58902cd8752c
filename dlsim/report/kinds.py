"""The page of each kind of run, keyed by the summary's ``kind`` as ``dlsim.kinds.registry``
keys the simulators; ``render_run`` is how every caller renders one Result.

This table lives in the report layer, not beside the simulators, because pages sit above
the kinds (imports point down): a kind's page imports ``units`` and ``sections``, and no
page imports another kind's page, so a new kind adds its page module and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable

from dlsim.report.federated import render_federated
from dlsim.report.inference import render_inference
from dlsim.report.pages import render_collective, render_training
from dlsim.results.result import Result

PAGES: dict[str, Callable[[Result], str]] = {
    "training": render_training,
    "collective": render_collective,
    "federated": render_federated,
    "edge-inference": render_inference,
}


def render_run(result: Result) -> str:
    """One self-contained HTML page for one simulated scenario, the page of its kind."""
    kind = result.summary.get("kind")
    if kind not in PAGES:
        raise ValueError(f"no report page for kind {kind!r}; dlsim.report.kinds.PAGES has "
                         f"{', '.join(PAGES)}")
    return PAGES[kind](result)
