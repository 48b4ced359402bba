"""Build an offline WordNet 3.0 corpus for nltk from Debian's `wordnet-base` package.

nltk's downloader needs the network. Debian ships the same WordNet 3.0 database files in
/usr/share/wordnet (`wordnet-base`, plus `index.sense` and `cntlist` from `wordnet-sense-index`;
`scripts/ci/install_services.sh` installs both). This script copies them (copies, not symlinks,
so the result can be moved or mounted elsewhere) into `<out>/corpora/wordnet/` and writes the
`lexnames` file, which the Debian packages do not ship but nltk's reader needs; its 45 lines are
those of the lexnames(5WN) man page.

Then `NLTK_DATA=<out>` makes `nltk.stem.WordNetLemmatizer` work offline (the OK-VQA stemmer uses
it). nltk's `punkt_tab` tokenizer and `averaged_perceptron_tagger_eng` have no offline source;
they must be fetched with `nltk.download` on a machine with network access.

Usage: python scripts/setup_nltk_data.py [--source /usr/share/wordnet] [--out .cache/nltk_data]
                                        [--allow-missing]
Idempotent: files already present with the same size are left alone.
"""

import argparse
import shutil
import sys
from pathlib import Path

from open_flamingo.tools.paths import REPO

# The database files nltk's WordNetCorpusReader opens (cntlist.rev and index.sense are optional
# for it, but are copied when present so lemma counts and sense keys work too).
REQUIRED = [
    f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")
] + [f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")]
OPTIONAL = ["cntlist.rev", "index.sense", "cntlist", "frames.vrb", "sents.vrb", "sentidx.vrb"]
# Syntactic category numbers of lexnames(5WN): 1 noun, 2 verb, 3 adjective, 4 adverb.
CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
LEXICOGRAPHER_FILES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
]  # fmt: skip


def lexnames_text() -> str:
    """The `lexnames` file: "NN<TAB>name<TAB>category" for the 45 lexicographer files."""
    lines = [
        f"{number:02d}\t{name}\t{CATEGORY[name.split('.')[0]]}"
        for number, name in enumerate(LEXICOGRAPHER_FILES)
    ]
    return "\n".join(lines) + "\n"


def missing_files(source: Path) -> list[str]:
    return [name for name in REQUIRED if not (source / name).is_file()]


def install_wordnet(source: Path, out: Path) -> Path:
    """Copy WordNet from `source` into `out/corpora/wordnet`; return that folder."""
    if missing := missing_files(source):
        raise SystemExit(
            f"setup_nltk_data: {source} lacks {', '.join(missing)}. Install Debian's WordNet "
            "files first: `sudo apt-get install wordnet-base wordnet-sense-index` (or run "
            "`bash scripts/ci/install_services.sh`)."
        )
    target = out / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    for name in REQUIRED + [n for n in OPTIONAL if (source / n).is_file()]:
        destination = target / name
        if destination.is_symlink():
            destination.unlink()
        if not destination.exists() or destination.stat().st_size != (source / name).stat().st_size:
            shutil.copyfile(source / name, destination)
    (target / "lexnames").write_text(lexnames_text())
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--out", type=Path, default=REPO / ".cache" / "nltk_data")
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="warn and exit 0 when the Debian files are absent (the tests needing WordNet then "
        "skip, or fail under CI=true)",
    )
    args = parser.parse_args(argv)
    if args.allow_missing and missing_files(args.source):
        print(
            f"setup_nltk_data: no WordNet in {args.source} (apt-get install wordnet-base "
            "wordnet-sense-index); skipped",
            file=sys.stderr,
        )
        return
    target = install_wordnet(args.source, args.out)
    print(f"setup_nltk_data: WordNet 3.0 in {target}; use NLTK_DATA={args.out}", file=sys.stderr)
