"""Synchronisation, stragglers, failures and statistical efficiency.

BSP, SSP and ASP parameter-server training (``parameter_server``), seeded slowdowns and slow
links (``stragglers``), failures with checkpoint/restart (``faults``), and how many steps a
target accuracy needs as a function of batch and staleness (``convergence``).
"""
