"""Benchmarks: measurements printed as Markdown, never pass/fail tests."""
