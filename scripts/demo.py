"""The embedded default (`make demo`): train a small Flamingo on CPU, then caption held-out images.

    python scripts/demo.py            # what `make demo` runs
    python scripts/demo.py --quick    # a tiny LM and a handful of steps: the test's mode

The stages and their settings: open_flamingo/demo/run.py.
"""

import sys

from open_flamingo.demo.run import main

if __name__ == "__main__":
    main(sys.argv[1:])
