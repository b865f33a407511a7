"""Exact fusions: declarative `Rule`s that merge op sequences into the ops backends run fast."""
