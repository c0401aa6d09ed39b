"""Bounds shared by several step configs."""

# numpy's global seed must stay below 2**32, and the classifier adds the fold number to its seed.
MAX_SEED = 2**31 - 1
