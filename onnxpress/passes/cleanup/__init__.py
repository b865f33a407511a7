"""Exact cleanup passes: constant folding, dead code, identity elimination."""
