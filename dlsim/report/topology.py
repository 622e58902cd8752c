"""A big topology as a picture a person can read: devices folded into their nodes, runs of
nodes wired alike folded into one, cables between the same groups drawn as one line.

A 1,024-GPU cluster has over 5,000 cables; drawn one by one they are a tangle. Grouped, the
picture shows what a user asks of it: which tier (NVLink inside a node, the leaves, the
spines) is busy, and which cables are the busiest.
"""

from __future__ import annotations

import re
from collections import defaultdict

import pandas as pd

_NODE_PART = re.compile(r"^n(\d+)/")  # a node's switch, NIC or PCIe root: n3/nvswitch


def _nodes_of_devices(src: list[str], dst: list[str]) -> dict[str, int]:
    """Each device's node, read off its cables to the node's own parts (n<k>/...)."""
    node: dict[str, int] = {}
    for a, b in ((a, b) for pair in zip(src, dst) for a, b in (pair, pair[::-1])):
        match = _NODE_PART.match(b)
        if a.isdigit() and match:
            node.setdefault(a, int(match.group(1)))
    return node


def _family(name: str) -> tuple[str, int] | None:
    """('node', 3) for 'node 3', ('spine', 12) for 'spine12'; None for what has no index."""
    match = re.fullmatch(r"(\D+?) ?(\d+)", name)
    return (match.group(1), int(match.group(2))) if match else None


def _fold_alike(groups: dict[str, str], pairs: list[tuple[str, str]],
                family: str) -> dict[str, str]:
    """Consecutive members of ``family`` (nodes, spines, ...) cabled to the same other
    groups become one group: 'nodes 0–3', 'spines 0–7'."""
    neighbours: dict[str, set[str]] = defaultdict(set)
    for a, b in pairs:
        ga, gb = groups[a], groups[b]
        if ga != gb:
            neighbours[ga].add(gb)
            neighbours[gb].add(ga)
    members = sorted((f[1], g) for g in set(groups.values())
                     if (f := _family(g)) is not None and f[0] == family)
    runs: list[list[tuple[int, str]]] = []
    for index, name in members:
        if runs and neighbours[runs[-1][-1][1]] == neighbours[name]:
            runs[-1].append((index, name))
        else:
            runs.append([(index, name)])
    rename = {}
    for run in runs:
        plural = family.strip() + "s"
        label = run[0][1] if len(run) == 1 else f"{plural} {run[0][0]}–{run[-1][0]}"
        rename.update({name: label for _, name in run})
    return {v: rename.get(g, g) for v, g in groups.items()}


def aggregate(links: pd.DataFrame) -> pd.DataFrame:
    """``links`` (src, dst, utilisation per directed link) grouped: devices and a node's
    parts into 'node k', runs of nodes (then of spines, leaves, ...) cabled alike into
    'nodes a–b'; per pair of groups, the
    busiest cable's utilisation and how many cables join them (cables inside a group are
    left out: they are drawn as the group)."""
    src, dst = links["src"].astype(str).tolist(), links["dst"].astype(str).tolist()
    device_node = _nodes_of_devices(src, dst)

    def group(v: str) -> str:
        match = _NODE_PART.match(v)
        if match:
            return f"node {match.group(1)}"
        return f"node {device_node[v]}" if v in device_node else v

    groups = {v: group(v) for v in set(src) | set(dst)}
    pairs = list(zip(src, dst))
    groups = _fold_alike(groups, pairs, "node")  # nodes first: then a tier above folds
    for family in sorted({f[0] for g in set(groups.values()) if (f := _family(g))} - {"node"}):
        groups = _fold_alike(groups, pairs, family)
    busiest: dict[tuple[str, str], float] = defaultdict(float)
    cables: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for a, b, u in zip(src, dst, links["utilisation"].astype(float)):
        ga, gb = groups[a], groups[b]
        if ga == gb:
            continue
        key = (min(ga, gb), max(ga, gb))
        busiest[key] = max(busiest[key], u)
        cables[key].add((min(a, b), max(a, b)))
    return pd.DataFrame({"src": [k[0] for k in busiest], "dst": [k[1] for k in busiest],
                         "utilisation": list(busiest.values()),
                         "cables": [len(cables[k]) for k in busiest]})
