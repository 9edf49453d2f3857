"""Runtimes run one model. Only ``runtimes/<framework>.py`` imports its framework, at model load."""
