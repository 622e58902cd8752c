"""Distributed edge inference: split points (Neurosurgeon), early exits (BranchyNet), a
device/edge/cloud hierarchy (DDNN) and spatial partitioning of convolutions (ADCNN).
"""
