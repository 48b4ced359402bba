"""The mixture spec (`--mixture PATH`): parsing into typed configs, refusals that name the source
and field, and the seeded draw whose realised proportions converge to the weights."""

import json
import math
import re

import pytest

from conftest import REPO
from open_flamingo.train.mixture import MixtureError, SourceDraw, load_mixture

DEFAULTS = dict(workers=0, seed=3, resampled=False, max_num_images=6, sim_threshold=0.24)


def spec(**overrides) -> dict:
    sources = [
        {
            "name": "omni",
            "type": "omnicorpus",
            "shards": "omni/docs",
            "image_prefix": "s3://bucket/images",
            "weight": 3,
            "batch_size": 2,
            "max_tokens": 64,
        },
        {
            "name": "web",
            "type": "text",
            "shards": "/abs/web",
            "weight": 1,
            "batch_size": 4,
            "max_tokens": 32,
            "loss_multiplier": 0.5,
            "num_samples": 40,
        },
        {
            "name": "laion",
            "type": "laion",
            "shards": "pairs",
            "batch_size": 8,
            "max_tokens": 16,
            "loss_multiplier": 0.2,
        },
    ]
    return {"steps": 10, "sources": sources, **overrides}


def write(tmp_path, data, name="mix.yaml"):
    path = tmp_path / name
    path.write_text(json.dumps(data))  # JSON is YAML too
    return path


def test_a_spec_becomes_typed_sources(tmp_path):
    mixture = load_mixture(write(tmp_path, spec()), **DEFAULTS)
    omni, web, laion = mixture.sources
    assert mixture.steps == 10
    assert [s.name for s in mixture.drawn] == ["omni", "web"]
    assert [s.name for s in mixture.every_step] == ["laion"]
    # relative local paths are taken from the spec's folder; s3:// and absolute ones as given
    assert omni.corpus.shards == str(tmp_path.resolve() / "omni/docs")
    assert omni.corpus.image_prefix == "s3://bucket/images"
    assert web.corpus.shards == "/abs/web"
    assert (omni.weight, web.weight, laion.weight) == (3.0, 1.0, None)
    assert (omni.loss_multiplier, web.loss_multiplier, laion.loss_multiplier) == (1.0, 0.5, 0.2)
    assert omni.corpus.seed == 3 and omni.corpus.max_num_images == 6 and web.kind == "text"
    # a source's epoch defaults to one run epoch of its batches; an explicit one is kept
    assert mixture.corpus_for(omni, world_size=2).num_samples == 10 * 2 * 2
    assert mixture.corpus_for(web, world_size=2).num_samples == 40
    assert mixture.micro_batch_size == 8 + 4
    # the same spec as JSON
    as_json = load_mixture(write(tmp_path, spec(), "mix.json"), **DEFAULTS)
    assert as_json.sources == mixture.sources and as_json.steps == mixture.steps


def change(index: int, **fields) -> dict:
    data = spec()
    for key, value in fields.items():
        if value is None:
            data["sources"][index].pop(key)
        else:
            data["sources"][index][key] = value
    return data


@pytest.mark.parametrize(
    "data, message",
    [
        (change(0, type="omnicorpuss"), "source 'omni': field 'type': Unknown dataset type"),
        (change(1, weight=0), "source 'web': field 'weight' must be > 0 (got 0)"),
        (change(1, weight=-1), "source 'web': field 'weight' must be > 0"),
        (change(1, weight="x"), "source 'web': field 'weight' must be a number"),
        (change(0, weight=None), "source 'omni': missing field 'weight'"),
        (change(2, weight=1), "source 'laion': a pair source (laion) gives a batch every step"),
        (change(0, shards=None), "source 'omni': missing field(s) ['shards']"),
        (change(0, image_prefix=None), "source 'omni': type 'omnicorpus' needs 'image_prefix'"),
        (change(0, colour="red"), "source 'omni': unknown field(s) ['colour']"),
        (change(0, batch_size=0), "source 'omni': field 'batch_size' must be >= 1 (got 0)"),
        (change(0, max_tokens=1.5), "source 'omni': field 'max_tokens' must be an integer"),
        (change(1, loss_multiplier=float("nan")), "'web': field 'loss_multiplier' must be a"),
        (change(1, loss_multiplier=-1), "'web': field 'loss_multiplier' must be >= 0"),
        (change(1, name="omni"), "source names must be unique; repeated: ['omni']"),
        (change(1, name="a b"), "name 'a b' must be letters"),
        (change(0, image_prefix="s3:///x"), "source 'omni': No bucket"),
        ({**spec(), "epochs": 2}, "unknown key(s) ['epochs']"),
        ({"sources": spec()["sources"]}, "missing 'steps'"),
        ({**spec(), "steps": 0}, "field 'steps' must be >= 1"),
        ({**spec(), "sources": []}, "'sources' must be a non-empty list"),
        ({**spec(), "sources": [spec()["sources"][2]]}, "no interleaved or text source"),
        ({**spec(), "sources": spec()["sources"][:2]}, "a text source needs a pair source"),
        ({**spec(), "sources": ["omni"]}, "source 1 is a str, not a mapping"),
    ],
)
def test_bad_specs_are_refused_naming_source_and_field(tmp_path, data, message):
    with pytest.raises(MixtureError) as error:
        load_mixture(write(tmp_path, data), **DEFAULTS)
    assert message in str(error.value)
    assert str(tmp_path / "mix.yaml") in str(error.value)


def test_unreadable_and_malformed_files_are_refused(tmp_path):
    with pytest.raises(MixtureError, match="cannot be read"):
        load_mixture(tmp_path / "missing.yaml", **DEFAULTS)
    (tmp_path / "bad.yaml").write_text("sources: [unclosed")
    with pytest.raises(MixtureError, match="not valid YAML"):
        load_mixture(tmp_path / "bad.yaml", **DEFAULTS)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(MixtureError, match="expected a mapping"):
        load_mixture(tmp_path / "list.json", **DEFAULTS)


def test_realised_proportions_converge_to_the_weights():
    weights = {"omnicorpus": 5.0, "obelics": 3.0, "mmc4": 2.0}
    draw = SourceDraw(list(weights), list(weights.values()), seed=42)
    n = 40_000
    for _ in range(n):
        draw.next()
    total = sum(weights.values())
    for name, weight in weights.items():
        p = weight / total
        # each count is Binomial(n, p): within 4 standard deviations with probability > 0.9999
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(draw.counts[name] - n * p) < 4 * sigma, (name, draw.counts)
    # and the error shrinks with n: the realised share at n is within 4 sigma / n of p
    assert sum(draw.counts.values()) == n


def test_every_rank_draws_the_same_sources_and_a_resumed_draw_continues_exactly():
    names, weights = ["a", "b", "c"], [0.5, 0.3, 0.2]
    rank0, rank1 = SourceDraw(names, weights, seed=7), SourceDraw(names, weights, seed=7)
    sequence = [rank0.next() for _ in range(500)]
    assert sequence == [rank1.next() for _ in range(500)]
    assert sequence != [SourceDraw(names, weights, seed=8).next() for _ in range(500)]
    # saved after 200 draws (as JSON, as checkpoints hold it), loaded into a fresh draw
    first = SourceDraw(names, weights, seed=7)
    for _ in range(200):
        first.next()
    resumed = SourceDraw(names, weights, seed=7)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert [resumed.next() for _ in range(300)] == sequence[200:]
    assert resumed.counts == rank0.counts
    with pytest.raises(ValueError, match="saved draw is over sources"):
        SourceDraw(["a", "b"], [1, 1], seed=7).load_state_dict(first.state_dict())


def test_the_documented_spec_parses(tmp_path):
    """docs/training.md's mixture of OmniCorpus, OBELICS, MMC4, web text and LAION."""
    text = (REPO / "docs" / "training.md").read_text()
    spec = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "mixture.yaml").write_text(spec)
    mixture = load_mixture(tmp_path / "mixture.yaml", **DEFAULTS)
    assert [s.name for s in mixture.drawn] == ["omnicorpus", "obelics", "mmc4", "web"]
    assert [s.name for s in mixture.every_step] == ["laion"]
    assert sum(s.weight for s in mixture.drawn) == pytest.approx(1.0)
