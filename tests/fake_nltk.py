"""A deterministic stand-in for nltk's tokenizer and POS tagger (whose data, punkt_tab and
averaged_perceptron_tagger_eng, cannot be installed offline), so the OK-VQA stemmer can be
compared with upstream's: both are given these same two functions. Imports nothing heavy, as
tests/upstream/eval_metrics_oracle.py imports it too."""

import re
import zlib

_TOKEN = re.compile(r"[\w']+|[^\w\s]")
# Tags chosen by a stable checksum of the word, so that every stemming branch is taken: words
# ending in "s" are plural nouns (NNS/NNPS) or verbs (VBZ); others are sometimes NNS as well,
# so that singularize also meets words that are not plural.
_S_TAGS = ("NNS", "NNPS", "VBZ")
_OTHER_TAGS = ("NN", "JJ", "NNP", "NNS", "VBG")


def tokenize(text: str) -> list[str]:
    """Words (with apostrophes) and single punctuation marks."""
    return _TOKEN.findall(text)


def pos_tag(words: list[str]) -> list[tuple[str, str]]:
    tags = []
    for word in words:
        choices = _S_TAGS if word.endswith("s") else _OTHER_TAGS
        tags.append((word, choices[zlib.crc32(word.encode()) % len(choices)]))
    return tags
