"""Benchmarks: commands that print speed and quality figures (`python -m stages bench NAME`)."""
