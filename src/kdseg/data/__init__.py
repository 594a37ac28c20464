"""Data: the built-in synthetic dataset, NIfTI I/O, preprocessing, splits and patch sampling."""
