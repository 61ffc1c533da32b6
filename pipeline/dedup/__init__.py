"""Duplicates: near-duplicate kernels and index (`neardup`), post-hoc leak checks (`leakcheck`)."""
