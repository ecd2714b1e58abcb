"""Typed public wrappers of the lli_fast ops, with backend choice (see lli_fast.backends)."""
