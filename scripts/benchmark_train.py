"""Benchmark one OmniCorpus training step at OF-3B shapes, on the trainer's own code path.

Usage and code: open_flamingo/benchmarks/train_step.py.
"""

from open_flamingo.benchmarks.train_step import main

if __name__ == "__main__":
    main()
