"""Cleanup pass tests (a package so that test_pipeline.py does not clash with
tests/passes/fusion/test_pipeline.py under pytest's default import mode)."""
