"""Benchmark few-shot captioning generation at OF-3B shapes: queries per second.

Usage and code: open_flamingo/benchmarks/generation.py.
"""

from open_flamingo.benchmarks.generation import main

if __name__ == "__main__":
    main()
