"""Finding models on disk and keeping their lifecycle."""
