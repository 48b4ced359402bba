"""Data-pipeline throughput: documents/s and images/s (fetch + decode + preprocess + tokenize) per

Usage and code: open_flamingo/benchmarks/data_throughput.py.
"""

import sys

from open_flamingo.benchmarks.data_throughput import main

if __name__ == "__main__":
    sys.exit(main())
