"""Benchmarks: each compares against a baseline measured in the same run and prints ratios.

Run ``python -m benchmarks NAME`` (``list`` shows the names, ``all`` runs every one).
"""
