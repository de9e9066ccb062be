"""Extras around the core stages; a reader of the core can skip them."""
