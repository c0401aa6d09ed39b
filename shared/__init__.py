"""Code every service imports: errors, image I/O, datasets, splits, models, checkpoints."""
