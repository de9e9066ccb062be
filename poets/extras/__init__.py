"""Extras beside the core stages: what the codelab's second half adds."""
