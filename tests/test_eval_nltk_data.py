"""scripts/setup_nltk_data.py (open_flamingo/tools/setup_nltk_data.py): the offline WordNet copy
for nltk."""

import pytest

from open_flamingo.tools import setup_nltk_data


def test_lexnames_file():
    lines = setup_nltk_data.lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3"
    assert lines[3] == "03\tnoun.Tops\t1"
    assert lines[28] == "28\tnoun.time\t1"
    assert lines[29] == "29\tverb.body\t2"
    assert lines[43] == "43\tverb.weather\t2"
    assert lines[44] == "44\tadj.ppl\t3"
    assert [line.split("\t")[0] for line in lines] == [f"{n:02d}" for n in range(45)]


def test_copies_files_and_is_idempotent(tmp_path):
    source = tmp_path / "wordnet"
    source.mkdir()
    for name in setup_nltk_data.REQUIRED + ["index.sense"]:
        (source / name).write_text(f"contents of {name}\n")
    out = tmp_path / "nltk_data"
    target = setup_nltk_data.install_wordnet(source, out)
    assert target == out / "corpora" / "wordnet"
    for name in setup_nltk_data.REQUIRED + ["index.sense"]:
        copied = target / name
        assert copied.is_file() and not copied.is_symlink()
        assert copied.read_text() == f"contents of {name}\n"
    assert not (target / "cntlist.rev").exists()  # optional and absent from the source
    assert (target / "lexnames").read_text() == setup_nltk_data.lexnames_text()
    (source / "data.noun").write_text("a newer, longer data.noun\n")
    setup_nltk_data.install_wordnet(source, out)  # a changed size is copied again
    assert (target / "data.noun").read_text() == "a newer, longer data.noun\n"


def test_missing_source(tmp_path, capsys):
    with pytest.raises(SystemExit, match="apt-get install wordnet-base wordnet-sense-index"):
        setup_nltk_data.install_wordnet(tmp_path, tmp_path / "out")
    setup_nltk_data.main(
        ["--source", str(tmp_path), "--out", str(tmp_path / "out"), "--allow-missing"]
    )
    assert "skipped" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
