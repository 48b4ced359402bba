"""Write a shard manifest: the shards a spec names, with the readable records of each.

Usage and code: open_flamingo/tools/make_manifest.py.
"""

import sys

from open_flamingo.tools.make_manifest import main

if __name__ == "__main__":
    sys.exit(main())
