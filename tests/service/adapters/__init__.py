"""Contract tests for the adapters: the real implementation and the fake pass the same tests."""
