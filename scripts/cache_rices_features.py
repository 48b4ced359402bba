"""Cache the CLIP image features of every training set for RICES.

Usage and code: open_flamingo/tools/cache_rices_features.py.
"""

from open_flamingo.tools.cache_rices_features import main

if __name__ == "__main__":
    main()
