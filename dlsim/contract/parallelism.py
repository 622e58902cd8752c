"""Which options of a parallelism section cannot go together: rules that need nothing but the
section, so the contract checks them when a scenario is validated, and
``dlsim.parallel.feasibility`` (the engine's and the planner's rules) starts with them."""

from __future__ import annotations

from typing import Protocol


class ParallelismSection(Protocol):
    """The options ``parallelism_conflict`` reads (a scenario's section, or a ``JobSpec``)."""

    @property
    def tensor(self) -> int: ...
    @property
    def pipeline(self) -> int: ...
    @property
    def schedule(self) -> str: ...
    @property
    def virtual_stages(self) -> int: ...
    @property
    def zero_stage(self) -> int: ...


def parallelism_conflict(par: ParallelismSection) -> str | None:
    """Why the parallelism section's options cannot go together, or None."""
    if par.pipeline > 1 and par.zero_stage > 1:
        return ("ZeRO stages 2 and 3 partition gradients and parameters that a pipeline "
                "accumulates over micro-batches; with pipeline > 1 use zero_stage 0 or 1")
    if par.tensor > 1 and par.zero_stage == 3:
        return ("ZeRO-3 gathers each layer's parameters before every forward and backward "
                "pass; dlsim runs that on data-parallel plans (tensor 1, pipeline 1) only, "
                "its tensor-parallel path exchanges parameters once per step; with tensor > 1 "
                "use zero_stage 0, 1 or 2")
    if par.schedule == "interleaved" and par.pipeline == 1:
        return "the interleaved schedule needs pipeline > 1"
    if par.virtual_stages > 1 and par.schedule != "interleaved":
        return "virtual_stages > 1 needs schedule: interleaved"
    return None
