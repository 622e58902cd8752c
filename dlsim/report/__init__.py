"""Reports: HTML pages, plots and unit formatting; they read results, never simulate."""
