"""docs/data.md's commands, one per corpus as its users download it: each parses with the flags it
shows and reads the dataset types it says (its paths are another machine's: they are not
looked at, as `parse_flags` does not)."""

import re
import shlex

import pytest

from conftest import REPO
from open_flamingo.train.args import parse_flags

DOC = REPO / "docs" / "data.md"
# Each command's data: (interleaved type, shards flag value, LAION type, shards flag value).
EXPECTED = [
    ("omnicorpus", "s3://bucket/OmniCorpus-CC", "laion", "s3://bucket/laion2b"),
    ("omnicorpus", "s3://bucket/omnicorpus-json", "laion_table", "/data/LaionEn"),
    ("omnicorpus_sim", "s3://bucket/omnicorpus_similarity", "laion_table", "/data/LaionEn"),
    ("obelics", "/data/OBELICS/data", "laion", "/data/laion2b"),
    ("mmc4", "/data/mmc4/docs", "laion", "/data/laion2b"),
    ("mmc4_wds", "/data/mmc4-wds", "laion", "/data/laion2b"),
    ("omnicorpus", "/data/OmniCorpus-CC", "laion", "/data/laion2b"),
    ("omnicorpus", "/data/OmniCorpus-CC", "laion_table", "/data/laion2b-metadata"),
    ("omnicorpus", "/data/OmniCorpus-CC", "laion_table", "/data/LaionEn"),
]


def documented_commands() -> tuple[list[str], list[list[str]]]:
    """COMMON's flags and each `$LAUNCH $COMMON ...` command's own flags."""
    text = DOC.read_text().replace("\\\n", " ")
    common = shlex.split(re.search(r'^COMMON="([^"]*)"', text, re.M).group(1))
    commands = [
        shlex.split(match.group(1))
        for match in re.finditer(r"^\$LAUNCH \$COMMON (.*)$", text, re.M)
    ]
    return common, commands


def test_every_corpus_has_its_command():
    _, commands = documented_commands()
    assert len(commands) == len(EXPECTED)


@pytest.mark.parametrize("index", range(len(EXPECTED)))
def test_documented_command_parses_and_reads_what_it_says(index):
    common, commands = documented_commands()
    args = parse_flags(common + commands[index])
    interleaved, interleaved_shards, laion, laion_shards = EXPECTED[index]
    assert args.interleaved_dataset == interleaved
    base = interleaved.split("_")[0]
    assert getattr(args, f"{base}_shards") == interleaved_shards
    assert (args.laion_dataset, args.laion_shards) == (laion, laion_shards)
