"""Top-level pytest configuration: makes the checkout importable without an install."""
