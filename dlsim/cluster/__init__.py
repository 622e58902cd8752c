"""Cluster: a scenario's cluster section turned into a topology, and ranks placed on it."""
