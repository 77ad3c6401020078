"""Slow, obvious pure-NumPy references that the fast kernels are tested against."""
