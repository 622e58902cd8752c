"""Results: what a simulation returns, its metrics (interval algebra, summaries), traces and
scaling fits of sweeps."""
