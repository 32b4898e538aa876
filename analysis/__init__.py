"""What the sweeps mean: cost counting, results tables, Pareto fronts, statistics, plots, reports."""
