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
    @property
    def overlap_param_gather(self) -> bool: ...


def parallelism_conflict(par: ParallelismSection) -> str | None:
    """Why the parallelism section's options cannot go together, or None."""
    if par.pipeline > 1 and par.zero_stage == 2:
        return ("ZeRO stage 2 partitions the gradients that a pipeline accumulates over its "
                "micro-batches, which DeepSpeed's pipeline engine refuses and Megatron-Core "
                "does not offer; with pipeline > 1 use zero_stage 1 (the distributed "
                "optimizer) or 3 (FSDP)")
    if par.overlap_param_gather and par.zero_stage not in (1, 2):
        return ("overlap_param_gather overlaps the all-gather of the parameters updated by "
                "ZeRO stage 1 or 2 (Megatron-Core's distributed optimizer) with the next "
                "step's forward; it needs zero_stage 1 or 2 (stage 3 gathers every layer "
                "before it runs anyway)")
    if par.schedule == "interleaved" and par.pipeline == 1:
        return "the interleaved schedule needs pipeline > 1"
    if par.virtual_stages > 1 and par.schedule != "interleaved":
        return "virtual_stages > 1 needs schedule: interleaved"
    return None
