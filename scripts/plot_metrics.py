"""Plot the losses of a training run's metrics.jsonl to a PNG loss curve.

Usage and code: open_flamingo/tools/plot_metrics.py.
"""

import sys

from open_flamingo.tools.plot_metrics import main

if __name__ == "__main__":
    main(sys.argv[1:])
