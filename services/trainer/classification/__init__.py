"""train-classifier's parts: data, the fold loop, operating point, resume state, plots, results, the strategy."""
