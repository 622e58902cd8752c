"""Distributed edge inference: split points (Neurosurgeon), early exits (BranchyNet), a
device/edge/cloud hierarchy (DDNN) and spatial partitioning of convolutions (ADCNN).

Kept free of imports so that ``dlsim.config`` can read ``dlsim.inference.spec`` without a cycle.
"""
