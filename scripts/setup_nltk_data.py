"""Build an offline WordNet 3.0 corpus for nltk from Debian's `wordnet-base` package.

Usage and code: open_flamingo/tools/setup_nltk_data.py.
"""

from open_flamingo.tools.setup_nltk_data import main

if __name__ == "__main__":
    main()
