"""Adapters to external parties: a Protocol each, with a real implementation and a fake."""
