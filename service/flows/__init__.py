"""Use cases. Each flow opens and owns its transaction; repositories only run statements in it."""
