"""The training job on one GPU under the accelerate configs the seed uses, end to end.

Usage and code: open_flamingo/benchmarks/training_runs.py.
"""

import sys

from open_flamingo.benchmarks.training_runs import main

if __name__ == "__main__":
    sys.exit(main())
