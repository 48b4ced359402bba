"""The benchmarks' code (docs/benchmarks.md has the method and the figures): each
`scripts/<benchmark>.py` calls `main` of its module here; docs/architecture.md maps them.
`common` holds the inputs our benchmarks share with upstream's (scripts/benchmark_upstream.py).
"""
