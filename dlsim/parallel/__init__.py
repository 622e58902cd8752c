"""Parallelism: the rank grid, per-rank programs (data, tensor, pipeline), and memory."""
