"""Write the seeded synthetic shapes corpus (OmniCorpus docs, LAION pairs, eval split).

Usage and code: open_flamingo/tools/make_synthetic_corpus.py.
"""

from open_flamingo.tools.make_synthetic_corpus import main

if __name__ == "__main__":
    main()
