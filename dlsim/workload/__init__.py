"""Workloads: model shapes and presets turned into layers of kernels, and their cost."""
