"""The codelab's command names: `python -m scripts.retrain`, and so on.

The codelab ran its scripts as modules of a `scripts` package from the
repository root. Each module here runs the top-level script of the same name
(its flags, manual and main), so both spellings do exactly the same.
"""
