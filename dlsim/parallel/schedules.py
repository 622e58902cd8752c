"""Pipeline schedules, one small class each, registered under the names
``parallelism.schedule`` accepts (``dlsim.contract.registry.SCHEDULE``), in the order the
planner tries them (gpipe, 1f1b, interleaved: ties between equal plans go to the earlier).

A schedule says in which order one stage runs its forward and backward passes, how many
forwards it runs before its first backward, how many micro-batches' activations it holds
at once, whether it takes ``virtual_stages`` model chunks per device, and its bubble in
closed form for the planner's estimate. The bubble the simulator reports is not that
formula: it is what the stages' dependencies leave idle (``dlsim.parallel.builder``). A new
schedule is a ``Schedule`` registered under its name, from any module.

- ``gpipe``: all forwards, then all backwards (Huang et al. 2019).
- ``1f1b``: ``stages - stage - 1`` warm-up forwards, then one forward and one backward in
  turn (PipeDream-Flush, Narayanan et al. 2021).
- ``interleaved``: interleaved 1F1B over ``v`` chunks, walking them in groups of
  ``stages`` micro-batches with Megatron-LM's warm-up of ``2(p - s - 1) + (v - 1)p``
  forwards, which divides the bubble by ``v`` (Narayanan et al. SC'21, §2.2.2).
"""

from __future__ import annotations

from dlsim.contract.registry import SCHEDULE, register, registered

Pass = tuple[str, int, int]  # ('F' or 'B', micro-batch, chunk)


class Schedule:
    """A pipeline schedule. The default pass order is 1F1B-shaped: ``warmup`` forwards,
    then forward and backward in turn, then the remaining backwards, over the passes
    ``unit`` numbers."""

    chunked = False  # takes virtual_stages > 1 model chunks per device

    def warmup(self, stage: int, stages: int, micro: int, chunks: int = 1) -> int:
        """Forward passes a stage runs before its first backward."""
        raise NotImplementedError

    def in_flight(self, stage: int, stages: int, micro: int, chunks: int = 1) -> float:
        """Micro-batches of a whole stage whose activations it holds at once."""
        raise NotImplementedError

    def unit(self, k: int, forward: bool, stages: int, chunks: int) -> tuple[int, int]:
        """(micro-batch, chunk) of a stage's k-th forward (or backward) pass."""
        return k, 0

    def order(self, stage: int, stages: int, micro: int, chunks: int = 1) -> list[Pass]:
        """The order of forward ('F', micro-batch, chunk) and backward ('B', ...) passes on
        one stage."""
        chunks = chunks if self.chunked else 1
        total = micro * chunks
        first = self.warmup(stage, stages, micro, chunks)
        order: list[Pass] = [("F", *self.unit(k, True, stages, chunks)) for k in range(first)]
        for k in range(total - first):
            order += [("F", *self.unit(first + k, True, stages, chunks)),
                      ("B", *self.unit(k, False, stages, chunks))]
        return order + [("B", *self.unit(k, False, stages, chunks))
                        for k in range(total - first, total)]

    def bubble_passes(self, stages: int, chunks: int = 1) -> float:
        """Idle time of a step in micro-batch passes (t_f + t_b), with free communication:
        (p - 1)/v (Narayanan et al. SC'21, §2.2)."""
        return (stages - 1) / chunks


class GPipe(Schedule):
    def warmup(self, stage: int, stages: int, micro: int, chunks: int = 1) -> int:
        return micro * chunks

    def in_flight(self, stage: int, stages: int, micro: int, chunks: int = 1) -> float:
        return micro


class OneFOneB(Schedule):
    def warmup(self, stage: int, stages: int, micro: int, chunks: int = 1) -> int:
        return min(stages - stage - 1, micro * chunks)

    def in_flight(self, stage: int, stages: int, micro: int, chunks: int = 1) -> float:
        return min(stages - stage, micro)


class Interleaved(Schedule):
    """The k-th forward runs chunk (k // p) mod v on micro-batch (k // pv)·p + k mod p, and
    backwards walk the chunks in reverse (Megatron-LM's ``get_model_chunk_id``)."""

    chunked = True

    def warmup(self, stage: int, stages: int, micro: int, chunks: int = 1) -> int:
        total = micro * chunks
        if micro == stages:  # Megatron-LM: with m = p every forward comes first
            return total
        return min(2 * (stages - stage - 1) + (chunks - 1) * stages, total)

    def in_flight(self, stage: int, stages: int, micro: int, chunks: int = 1) -> float:
        """Its warm-up plus one chunk-passes of 1/v of a stage each."""
        return min(self.warmup(stage, stages, micro, chunks) + 1, micro * chunks) / chunks

    def unit(self, k: int, forward: bool, stages: int, chunks: int) -> tuple[int, int]:
        rounds, pos = divmod(k, stages * chunks)
        chunk = pos // stages
        return rounds * stages + pos % stages, chunk if forward else chunks - 1 - chunk


register(SCHEDULE, "gpipe", GPipe())
register(SCHEDULE, "1f1b", OneFOneB())
register(SCHEDULE, "interleaved", Interleaved())


def schedule_of(name: str) -> Schedule:
    """The registered schedule ``name`` (``parallelism.schedule``, validated)."""
    schedule: Schedule = registered(SCHEDULE)[name]
    return schedule


def schedule_names() -> tuple[str, ...]:
    """Every registered schedule, in registration order (read when called, so a
    registration made later counts)."""
    return tuple(registered(SCHEDULE))
