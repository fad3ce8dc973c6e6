"""Helpers for tests, the demo and benchmarks: tiny local models and an HF oracle."""
