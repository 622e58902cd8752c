"""Sweeps: grids of scenarios run on local processes or a Dask cluster, cached per point."""
