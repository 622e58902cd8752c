"""The engine: SimPy processes that run each device's program on its streams."""
