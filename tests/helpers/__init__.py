"""What several test packages share: tiny models, fixture caches, the CLI in-process, training data."""
