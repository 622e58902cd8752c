"""Analyses of simulated results: how a sweep's throughput scales with the device count."""
