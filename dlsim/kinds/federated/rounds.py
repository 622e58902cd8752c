"""Synchronous rounds: FedAvg (McMahan et al., AISTATS 2017) and FedProx (Li et al., MLSys
2020), with the straggler policies a server can apply.

A round starting at t0 selects ceil(overcommit · K) of the clients online at t0, uniformly
at random (Bonawitz et al., "Towards Federated Learning at Scale", SysML 2019: select about
130 % of the target, aggregate the first K reports). Each selected client

  downloads the model:  t0 + latency + model_bytes / goodput_down     (server link shared)
  trains locally:       E · n_k · seconds_per_sample  (+ E · ceil(n_k / B) proximal steps)
  uploads its update:   + latency + update_bytes / goodput_up           (server link shared)

and fails if it goes offline first. The server learns of a failure when it happens; the
round ends when the policy's target number of updates has arrived, or when every selected
client has either arrived or failed, and (policy ``deadline``) at the latest at
t0 + deadline_s. Aggregation is FedAvg's weighted mean (weights n_k) and takes no time.
The events of a round (downloads, trainings, uploads ending) are computed together with
numpy: their order within a round cannot change the outcome, only their times do.
Work of a client that is not aggregated is wasted: the device-seconds from t0 until it was
dropped, and the FLOPs it trained by then. Transfer shares are computed as if every
selected client completed its transfers.
"""

from __future__ import annotations

import math

import numpy as np

from dlsim.contract.federated import FederatedSpec
from dlsim.kinds.federated.availability import Availability
from dlsim.kinds.federated.link import finish_times
from dlsim.kinds.federated.population import Population
from dlsim.kinds.federated.tally import Tally


def round_work_s(fed: FederatedSpec, pop: Population, clients: np.ndarray) -> np.ndarray:
    """Seconds of local training: E epochs over n_k samples, plus FedProx's extra pass per
    local step of batch_size samples."""
    steps = fed.local_epochs * np.ceil(pop.samples[clients] / fed.batch_size)
    return (fed.local_epochs * pop.samples[clients] * pop.sample_s[clients]
            + steps * pop.step_extra_s[clients])


def _target(fed: FederatedSpec, m: int) -> int:
    """How many updates the round waits for, of m selected."""
    keep = m - math.floor(fed.straggler.fraction * m) if fed.straggler.policy == \
        "drop-slowest" else m
    return min(fed.clients_per_round, keep)


def run_rounds(fed: FederatedSpec, pop: Population, avail: Availability,
               model_bytes: float, update_bytes: float, server_Bps: float | None,
               rng: np.random.Generator) -> Tally:
    tally = Tally(pop)
    policy, deadline_s = fed.straggler.policy, fed.straggler.deadline_s  # set iff "deadline"
    select = math.ceil(fed.overcommit * fed.clients_per_round)
    least = max(1, math.ceil(fed.min_participation * fed.clients_per_round))
    t0 = 0.0
    for r in range(fed.rounds):
        online, remaining = avail.query(t0)
        candidates = np.flatnonzero(online)
        if not len(candidates):  # nobody to train: check in again after retry_s
            tally.add_round(t0, t0 + fed.retry_s, 0, True)
            t0 += fed.retry_s
            continue
        sel = rng.choice(candidates, size=min(select, len(candidates)), replace=False)
        m = len(sel)
        scale = pop.width[sel] ** 2                       # HeteroFL: bytes and FLOPs ~ width^2
        down_size, up_size = model_bytes * scale, update_bytes * scale
        up_bps, down_bps = pop.goodput(sel, rng)
        lat = pop.latency_s[sel]
        down_end = finish_times(t0 + lat, down_size, down_bps, server_Bps)
        work_s = round_work_s(fed, pop, sel)
        train_end = down_end + work_s
        up_end = finish_times(train_end + lat, up_size, up_bps, server_Bps)

        fail_at = t0 + remaining[sel]                     # goes offline
        random_drop = np.zeros(m, dtype=bool)
        if policy == "random-drop":
            chosen = rng.choice(m, size=round(fed.straggler.fraction * m), replace=False)
            random_drop[chosen] = train_end[chosen] < fail_at[chosen]
            fail_at[chosen] = np.minimum(fail_at[chosen], train_end[chosen])
        failed = fail_at < up_end
        ok = np.flatnonzero(~failed)
        ok = ok[np.argsort(up_end[ok], kind="stable")]    # arrival order
        need = _target(fed, m)
        if len(ok) >= need:
            end = float(up_end[ok[need - 1]])
        else:
            end = float(max(up_end[ok].max(initial=t0), fail_at[failed].max(initial=t0)))
        cutoff = t0 + deadline_s if deadline_s is not None else math.inf
        end = min(end, cutoff)
        taken = np.zeros(m, dtype=bool)
        taken[ok[:need][up_end[ok[:need]] <= end]] = True

        resolved = np.where(taken, up_end, np.minimum(fail_at, end))
        trained = np.clip(resolved - down_end, 0.0, work_s)
        flops = fed.local_epochs * pop.samples[sel] * pop.flops_per_sample[sel]
        lost = ~taken
        share = np.divide(trained, work_s, out=np.zeros(m), where=work_s > 0)
        wasted_flops = share * flops
        offline = lost & (fail_at <= end) & ~random_drop
        late = lost & ~offline & ~random_drop
        reason = {"deadline": "deadline" if end >= cutoff else "overcommit",
                  "drop-slowest": "slowest"}.get(policy, "overcommit")
        for name, mask in (("offline", offline), ("random", random_drop & lost),
                           (reason, late)):
            tally.add_waste(name, int(mask.sum()), float(wasted_flops[mask].sum()),
                            float((resolved[mask] - t0).sum()))
        tally.add_clients(sel, taken, trained, np.where(down_end <= resolved, down_size, 0.0),
                          np.where(taken, up_size, 0.0))
        tally.add_round(t0, end, int(taken.sum()), int(taken.sum()) < least)
        tally.events += 3 * m + 1
        if r < fed.trace_rounds:
            for i, client in enumerate(sel.tolist()):
                stop = resolved[i]
                tally.add_spans(client, f"r{r}", [
                    ("comm", "download", t0, min(down_end[i], stop)),
                    ("compute", "train", down_end[i], min(train_end[i], stop)),
                    ("comm", "upload", train_end[i], min(up_end[i], stop)),
                    ("wait", "wait", up_end[i] if taken[i] else end, end)])
        t0 = end
    return tally
