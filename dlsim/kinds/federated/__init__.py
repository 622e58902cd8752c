"""Federated learning: a population of phones and edge devices training in rounds.

``simulator.simulate_federated`` runs a ``kind: federated`` scenario: synchronous FedAvg or
FedProx rounds (``rounds``) or buffered asynchronous FedBuff (``fedbuff``), over clients
drawn from device classes (``population``) or traces (``traces``).
"""
