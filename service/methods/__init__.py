"""Verification methods: how each proof is checked (the HTTP flows come with the methods issue)."""
