"""Benchmarks, each run as `python -m bench.<module>`: they print figures, not pass/fail."""
