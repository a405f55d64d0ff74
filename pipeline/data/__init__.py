"""Datasets: the registry and fetching (download), parsers and preprocessing, and the processed format."""
