"""Published statistical-efficiency laws: steps against batch, and loss against size and data.

McCandlish et al. 2018, "An Empirical Model of Large-Batch Training" (arXiv 1812.06162),
eq. 2.11: S = S_min (1 + B_noise / B) steps and E = E_min (1 + B / B_noise) examples, with
E_min = S_min B_noise, so that (S / S_min - 1)(E / E_min - 1) = 1.

Kaplan et al. 2020, "Scaling Laws for Neural Language Models" (arXiv 2001.08361), loss L in
nats per token on WebText2, B in tokens:
- eq. 1.4 (§5.1): the critical batch B_crit(L) = B* / L^(1/alpha_B), B* ~ 2e8 tokens,
  alpha_B ~ 0.21;
- eq. 1.6 with Table 3's fit: L(N, S_min) = (N_c / N)^alpha_N + (S_c / S_min)^alpha_S with
  alpha_N = 0.077, N_c = 6.5e13 non-embedding parameters, alpha_S = 0.76, S_c = 2.1e3, so
  S_min(L) = S_c / (L - (N_c / N)^alpha_N)^(1 / alpha_S);
- eq. 5.4 (§5.1): S = S_min (1 + B_crit / B), McCandlish's relation with B_noise = B_crit.

Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (arXiv 2203.15556),
§3.3 eq. 2 fitted by Approach 3 (eq. 10): L(N, D) = E + A / N^alpha + B / D^beta with
E = 1.69, A = 406.4, B = 410.7, alpha = 0.34, beta = 0.28 (N parameters, D tokens), so the
tokens to reach L are D = (B / (L - E - A / N^alpha))^(1 / beta).
"""

from __future__ import annotations

import math

KAPLAN_B_STAR_TOKENS = 2e8
KAPLAN_ALPHA_B = 0.21
KAPLAN_N_C = 6.5e13
KAPLAN_ALPHA_N = 0.077
KAPLAN_S_C = 2.1e3
KAPLAN_ALPHA_S = 0.76

CHINCHILLA_E, CHINCHILLA_A, CHINCHILLA_B = 1.69, 406.4, 410.7
CHINCHILLA_ALPHA, CHINCHILLA_BETA = 0.34, 0.28

MCCANDLISH = ("steps S = S_min (1 + B_noise / B), examples E = E_min (1 + B / B_noise) "
              "(McCandlish et al. 2018, eq. 2.11)")
KAPLAN_BCRIT = (f"critical batch B_crit(L) = {KAPLAN_B_STAR_TOKENS:g} / L^(1/{KAPLAN_ALPHA_B})"
                " tokens (Kaplan et al. 2020, eq. 1.4, §5.1)")
KAPLAN_SMIN = (f"S_min(L) = {KAPLAN_S_C:g} / (L - ({KAPLAN_N_C:g}/N)^{KAPLAN_ALPHA_N})"
               f"^(1/{KAPLAN_ALPHA_S}) (Kaplan et al. 2020, eq. 1.6, Table 3)")
KAPLAN_STEPS = "S = S_min (1 + B_crit / B) (Kaplan et al. 2020, eq. 5.4)"
CHINCHILLA = (f"L(N, D) = {CHINCHILLA_E} + {CHINCHILLA_A} / N^{CHINCHILLA_ALPHA} + "
              f"{CHINCHILLA_B} / D^{CHINCHILLA_BETA} (Hoffmann et al. 2022, eq. 10, "
              "Approach 3): tokens D at the target loss")


def mccandlish_steps(min_steps: float, noise_batch: float, batch: float) -> float:
    """S = S_min (1 + B_noise / B)."""
    return min_steps * (1.0 + noise_batch / batch)


def mccandlish_examples(min_steps: float, noise_batch: float, batch: float) -> float:
    """E = E_min (1 + B / B_noise), E_min = S_min B_noise (equal to S * B)."""
    return min_steps * noise_batch * (1.0 + batch / noise_batch)


def kaplan_critical_batch_tokens(loss: float) -> float:
    """B_crit(L) = B* / L^(1/alpha_B) tokens."""
    return KAPLAN_B_STAR_TOKENS / loss ** (1.0 / KAPLAN_ALPHA_B)


def kaplan_loss_floor(non_embedding_parameters: float) -> float:
    """(N_c / N)^alpha_N: the loss of N parameters after infinitely many steps."""
    return float((KAPLAN_N_C / non_embedding_parameters) ** KAPLAN_ALPHA_N)


def kaplan_min_steps(loss: float, non_embedding_parameters: float) -> float:
    """S_min(L) = S_c / (L - (N_c / N)^alpha_N)^(1/alpha_S); needs L above the floor."""
    gap = loss - kaplan_loss_floor(non_embedding_parameters)
    return float(KAPLAN_S_C / gap ** (1.0 / KAPLAN_ALPHA_S))


def chinchilla_loss(parameters: float, tokens: float) -> float:
    """L(N, D) = E + A / N^alpha + B / D^beta (D = inf: the loss floor of N parameters)."""
    data = 0.0 if math.isinf(tokens) else CHINCHILLA_B / tokens ** CHINCHILLA_BETA
    return float(CHINCHILLA_E + CHINCHILLA_A / parameters ** CHINCHILLA_ALPHA + data)


def chinchilla_tokens(loss: float, parameters: float) -> float:
    """D = (B / (L - E - A / N^alpha))^(1/beta), the inverse of ``chinchilla_loss``."""
    gap = loss - chinchilla_loss(parameters, float("inf"))
    return float((CHINCHILLA_B / gap) ** (1.0 / CHINCHILLA_BETA))
