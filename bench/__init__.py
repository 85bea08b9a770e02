"""Benchmarks that back the design's performance claims: each prints a table, side by side in one run."""
