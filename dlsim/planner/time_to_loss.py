"""The planner's objective ``time-to-loss``: time, tokens, energy and cost to a target loss.

A plan at global batch B (samples of s tokens) needs, by Kaplan et al. 2020 (eq. 5.4, with
B_crit(L) of eq. 1.4 and S_min(L) of eq. 1.6: ``dlsim.kinds.sync.scaling_laws``),

    S(B) = S_min (1 + B_crit / (B·s)) steps and E(B) = S·B·s = E_min (1 + B·s / B_crit)
    tokens, E_min = S_min·B_crit,

so its time to the target is S(B) × its step time at B, and its energy and cost follow from
the same step. S depends on the batch and the target only, never on the GPUs: more GPUs at a
fixed global batch need the same steps, and only their step time changes. The planner prices
each plan at every batch it can split and keeps it at its best batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dlsim.contract.errors import ScenarioError
from dlsim.kinds.sync import scaling_laws as laws
from dlsim.workload.model import Model


@dataclass(frozen=True)
class LossTarget:
    """A target loss for a model of ``non_embedding_parameters`` trained on sequences of
    ``seq_len`` tokens: Kaplan et al.'s S_min and B_crit at that loss."""

    loss: float
    seq_len: int
    non_embedding_parameters: int
    min_steps: float
    critical_batch_tokens: float

    @classmethod
    def of(cls, loss: float, model: Model, seq_len: int) -> LossTarget:
        """The target for ``model`` (N: its transformer blocks' parameters, as Kaplan et al.
        count); a loss at or below the floor (N_c/N)^alpha_N is refused."""
        n = sum(layer.params for layer in model.layers if layer.role == "block")
        floor = laws.kaplan_loss_floor(n)
        if loss <= floor:
            raise ScenarioError(
                f"--target-loss {loss:g} is out of reach of a model of {n:,} non-embedding "
                f"parameters: Kaplan et al.'s L(N, S) never falls below (N_c/N)^alpha_N = "
                f"{floor:.4g} nats; give a loss above it.", field="--target-loss")
        return cls(loss, seq_len, n, laws.kaplan_min_steps(loss, n),
                   laws.kaplan_critical_batch_tokens(loss))

    @property
    def critical_batch_samples(self) -> float:
        return self.critical_batch_tokens / self.seq_len

    def steps(self, batch: int) -> float:
        """S = S_min (1 + B_crit / B), B in tokens."""
        return laws.mccandlish_steps(self.min_steps, self.critical_batch_tokens,
                                     batch * self.seq_len)

    def tokens(self, batch: int) -> float:
        """E = S·B = E_min (1 + B / B_crit) tokens."""
        return laws.mccandlish_examples(self.min_steps, self.critical_batch_tokens,
                                        batch * self.seq_len)

    def assumptions(self) -> list[str]:
        return [laws.KAPLAN_BCRIT, laws.KAPLAN_SMIN, laws.KAPLAN_STEPS,
                f"N = {self.non_embedding_parameters:,} non-embedding parameters (the "
                "transformer blocks')",
                "loss in nats per token on Kaplan et al.'s WebText2: another corpus or "
                "tokenizer shifts every constant",
                "time to the target = steps x step time at that batch (no failures or "
                "checkpoints: `dlsim run` with failures: prices them)"]


def to_target(row: dict[str, Any], target: LossTarget, batch: int) -> float:
    """Write the steps and tokens to ``target`` into a plan's ``row``; the steps."""
    steps = target.steps(batch)
    row["global_batch"] = batch
    row["steps_to_target"] = steps
    row["tokens_to_target"] = target.tokens(batch)
    return steps


def summary(target: LossTarget, batches: tuple[int, ...],
            curves: list[dict[str, Any]]) -> dict[str, Any]:
    """The plan summary's ``time_to_loss``: the target, Kaplan's figures at it, the batches
    searched and, for the best layouts, step time, steps and time to the target per batch."""
    return {"target_loss": target.loss, "min_steps": target.min_steps,
            "critical_batch_tokens": target.critical_batch_tokens,
            "critical_batch_samples": target.critical_batch_samples,
            "non_embedding_parameters": target.non_embedding_parameters,
            "seq_len": target.seq_len, "batches": list(batches), "curves": curves,
            "assumptions": target.assumptions()}


def batch_reason(row: dict[str, Any], target: LossTarget, batches: tuple[int, ...]) -> str:
    """Where the winner's batch lies against B_crit and the searched batches, in words."""
    batch = row["global_batch"]
    edge = ""
    if len(batches) > 1 and batch == batches[0]:
        edge = ("; it is the smallest batch searched (B_crit/8 bounds the search): at "
                "this layout a larger batch lengthens the step more than it cuts the steps")
    elif len(batches) > 1 and batch == batches[-1]:
        edge = ("; it is the largest batch searched (8 B_crit bounds the search): a larger "
                "batch still cut the steps more than it lengthened each one")
    return (f"At loss {target.loss:g} the critical batch is "
            f"{target.critical_batch_samples:,.0f} samples "
            f"({target.critical_batch_tokens:,.0f} tokens) and S_min "
            f"{target.min_steps:,.0f} steps (Kaplan et al. 2020); the winner runs a global "
            f"batch of {batch:,} ({batch / target.critical_batch_samples:.2g} x B_crit): "
            f"{row['steps_to_target']:,.0f} steps, {row['tokens_to_target']:.3g} tokens{edge}.")
