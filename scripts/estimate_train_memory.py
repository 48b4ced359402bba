"""Estimate the peak memory of one training step at OF-3B shapes, without a GPU.

Usage and code: open_flamingo/benchmarks/train_memory.py.
"""

from open_flamingo.benchmarks.train_memory import main

if __name__ == "__main__":
    main()
