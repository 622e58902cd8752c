"""Scenario kinds: each runs its own simulation (training, collective, federated, edge
inference, parameter-server synchronisation)."""
