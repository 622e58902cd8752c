"""Which global batches the planner searches, and what ``--global-batch`` may say.

With a target loss the global batch is traded against steps (Kaplan et al. 2020, eq. 5.4:
S = S_min (1 + B_crit / B)): well below the critical batch B_crit every step is cheap but
many are needed; well above it steps barely fall while each one costs more. So the searched
batches are the given batch g times powers of two, g·2^k, that lie within [B_crit/8,
8·B_crit]: at B_crit/8 the steps are 9·S_min, at 8·B_crit the tokens are 9·E_min
(E = E_min (1 + B/B_crit)), both far past any plan worth running. A plan runs a batch only if
its data-parallel degree times its micro-batch divides it (``dlsim.planner.space``).

``--global-batch`` takes one batch (``1536``), a list (``512,1024,2048``) or a range of
doublings (``512:8192`` is 512, 1024, ..., 8192).
"""

from __future__ import annotations

from dlsim.contract.errors import ScenarioError

WINDOW = 8.0  # the searched batches lie within [B_crit / WINDOW, WINDOW · B_crit]


def parse_global_batch(text: str) -> tuple[int, ...]:
    """The batches ``--global-batch`` names, in increasing order."""
    try:
        if ":" in text:
            low, high = (int(v) for v in text.split(":"))
            if low < 1 or high < low:
                raise ValueError
            batches = [low << k for k in range((high // low).bit_length())
                       if low << k <= high]
        else:
            batches = [int(v) for v in text.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise ScenarioError(f"--global-batch takes a batch in samples (1536), a list "
                            f"(512,1024,2048) or a range of doublings (512:8192); got "
                            f"{text!r}.", field="--global-batch")
    return tuple(sorted(set(batches)))


def around_critical(base: int, critical_samples: float) -> tuple[int, ...]:
    """``base``·2^k (k of either sign, whole batches only) within [B_crit/8, 8·B_crit]."""
    low, high = critical_samples / WINDOW, critical_samples * WINDOW
    batches, b = set(), base
    while True:  # halving while the batch stays whole
        if low <= b <= high:
            batches.add(b)
        if b % 2 or b / 2 < low:
            break
        b //= 2
    b = base * 2
    while b <= high:
        if b >= low:
            batches.add(b)
        b *= 2
    if not batches:
        raise ScenarioError(f"no batch {base}·2^k lies within [B_crit/{WINDOW:g}, "
                            f"{WINDOW:g}·B_crit] = [{low:,.0f}, {high:,.0f}] samples around "
                            f"the critical batch of {critical_samples:,.0f} samples; give "
                            "--global-batch a batch near it, or a list of batches.",
                            field="--global-batch")
    return tuple(sorted(batches))
