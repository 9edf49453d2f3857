"""Running models in subprocesses: crash isolation for user code."""
