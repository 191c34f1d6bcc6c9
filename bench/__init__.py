"""Benchmarks, each run as `python -m bench.<module>`; they print figures, they assert nothing."""
