"""Training on a mixture of corpora (`--mixture PATH`): the spec, its validation and the draw.

The spec is a small YAML or JSON file (docs/training.md has a full example):

    steps: 10000            # micro-steps per epoch of the run (--num_epochs epochs)
    sources:
      - {name: omnicorpus, type: omnicorpus, shards: s3://b/omni, image_prefix: s3://b/img,
         weight: 0.5, batch_size: 8, max_tokens: 1024, loss_multiplier: 1.0}
      - {name: web, type: text, shards: /data/web, weight: 0.1, batch_size: 8, max_tokens: 1024}
      - {name: laion, type: laion, shards: s3://b/laion, batch_size: 16, max_tokens: 32,
         loss_multiplier: 0.2}

How sources act:
* A pair source (a type of kind "pairs": laion, laion_table) gives one batch every micro-step,
  as upstream's LAION does; it has no weight.
* Every other source (interleaved or text) is drawn: each micro-step takes the batch of exactly
  one of them, chosen by `SourceDraw` with probability weight / (sum of the drawn weights). The
  draw is a NumPy PCG64 generator seeded from --seed alone, so every rank draws the same source
  at every micro-step (DDP, ZeRO and FSDP need all ranks to run the same step), and its state is
  saved in checkpoints, so a resumed run draws what the uninterrupted one would have.
* The micro-step's loss is the sum over its batches of loss_multiplier x that batch's loss.
* A text source's batches have no images: the model runs them as its plain LM. Its vision side
  gets no gradient from them, so a mixture with a text source must also have a pair source,
  whose batch in every step gives the vision side its gradient (DDP reduces every trainable
  parameter every step).

Length: the run is --num_epochs x `steps` micro-steps. A source's own epoch is `num_samples`
samples, all processes together (default: enough for every micro-step of one run epoch to come
from it, `steps x batch_size x processes`). A source whose epoch runs out starts its next one
at once: its loader continues into the next, reshuffled, pass over its shards (or its next
resampled shard with --dataset_resampled); the epochs each source has started are logged
(`epoch/<name>`) and saved with its loader's position.

Relative local paths in the spec are taken from the spec file's folder.
"""

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from open_flamingo.data.config import CorpusConfig
from open_flamingo.data.formats import get_format
from open_flamingo.data.storage import parse_location

SPEC_KEYS = {"steps", "sources"}
REQUIRED_SOURCE_KEYS = ("name", "type", "shards", "batch_size", "max_tokens")
SOURCE_KEYS = {
    *REQUIRED_SOURCE_KEYS,
    "image_prefix",
    "weight",
    "loss_multiplier",
    "num_samples",
    "max_num_images",
}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # it becomes part of metric names
DRAW_STREAM = 0x6D6978  # keeps the draw's generator apart from every other use of --seed


class MixtureError(ValueError):
    """A mixture spec that cannot be trained on; the message names the file, source and field."""


@dataclass(frozen=True)
class MixtureSource:
    """One source: its corpus, and how it enters the step."""

    name: str
    corpus: CorpusConfig  # num_samples 0: not given, see `with_num_samples`
    weight: float | None  # None: a pair source, one batch every micro-step
    loss_multiplier: float

    @property
    def every_step(self) -> bool:
        return self.weight is None

    @property
    def kind(self) -> str:
        return get_format(self.corpus.dataset_type).kind


@dataclass(frozen=True)
class MixtureConfig:
    path: str
    steps: int  # micro-steps per run epoch
    sources: tuple[MixtureSource, ...]

    @property
    def every_step(self) -> tuple[MixtureSource, ...]:
        return tuple(source for source in self.sources if source.every_step)

    @property
    def drawn(self) -> tuple[MixtureSource, ...]:
        return tuple(source for source in self.sources if not source.every_step)

    @property
    def micro_batch_size(self) -> int:
        """The most samples one process takes in a micro-step."""
        pairs = sum(source.corpus.batch_size for source in self.every_step)
        return pairs + max(source.corpus.batch_size for source in self.drawn)

    def corpus_for(self, source: MixtureSource, world_size: int) -> CorpusConfig:
        """The source's CorpusConfig, with its default epoch length filled in."""
        if source.corpus.num_samples:
            return source.corpus
        return replace(
            source.corpus, num_samples=self.steps * source.corpus.batch_size * world_size
        )

    def data_order(self) -> dict:
        """What fixes the order of the mixture's batches, for the resume check."""
        return {
            "steps": self.steps,
            "sources": [
                [s.name, s.corpus.dataset_type, s.weight, s.corpus.batch_size, s.corpus.num_samples]
                for s in self.sources
            ],
        }


# --- reading and validating the spec -------------------------------------------------------


def _read(path: Path):
    try:
        text = path.read_text()
    except OSError as error:
        raise MixtureError(f"--mixture {path}: cannot be read ({error.strerror})") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        import yaml  # noqa: PLC0415 (only mixture runs need it)

        return yaml.safe_load(text)
    except (ValueError, ImportError) as error:
        raise MixtureError(f"--mixture {path}: not valid YAML / JSON: {error}") from None
    except Exception as error:  # yaml.YAMLError and its subclasses
        raise MixtureError(f"--mixture {path}: not valid YAML: {error}") from None


def _number(where: str, field: str, value, *, integer: bool, minimum: float, strict: bool):
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise MixtureError(f"{where}: field {field!r} must be {kind} (got {value!r})")
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        sign = ">" if strict else ">="
        raise MixtureError(f"{where}: field {field!r} must be {sign} {minimum} (got {value!r})")
    return value


def _location(value, base: Path) -> str:
    """A shards / image prefix entry: s3:// as given, a relative local path from `base`."""
    if "://" in value or "{" in value or Path(value).is_absolute():
        return value
    return str(base / value)


def _source(entry, index: int, base: Path, path: Path, defaults: dict) -> MixtureSource:
    where = f"--mixture {path}: source {index + 1}"
    if not isinstance(entry, dict):
        raise MixtureError(f"{where} is a {type(entry).__name__}, not a mapping of fields")
    if isinstance(entry.get("name"), str):
        where = f"--mixture {path}: source {entry['name']!r}"
    unknown = sorted(set(entry) - SOURCE_KEYS)
    if unknown:
        raise MixtureError(f"{where}: unknown field(s) {unknown}; known: {sorted(SOURCE_KEYS)}")
    missing = [key for key in REQUIRED_SOURCE_KEYS if entry.get(key) is None]
    if missing:
        raise MixtureError(f"{where}: missing field(s) {missing}")
    name = entry["name"]
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise MixtureError(f"{where}: name {name!r} must be letters, digits, '_', '-' or '.'")
    try:
        fmt = get_format(str(entry["type"]))
    except ValueError as error:
        raise MixtureError(f"{where}: field 'type': {error}") from None
    for field in ("shards", "image_prefix"):
        if entry.get(field) is not None and not (isinstance(entry[field], str) and entry[field]):
            raise MixtureError(f"{where}: field {field!r} must be a non-empty string")
    if fmt.needs_image_prefix and entry.get("image_prefix") is None:
        raise MixtureError(
            f"{where}: type {entry['type']!r} needs 'image_prefix': its records name images "
            "stored there"
        )
    if fmt.kind == "pairs" and "weight" in entry:
        raise MixtureError(
            f"{where}: a pair source ({entry['type']}) gives a batch every step and has no "
            "'weight'; remove it (weights choose among the interleaved and text sources)"
        )
    weight = None
    if fmt.kind != "pairs":
        if "weight" not in entry:
            raise MixtureError(f"{where}: missing field 'weight' (its share of the steps)")
        weight = float(
            _number(where, "weight", entry["weight"], integer=False, minimum=0, strict=True)
        )
    multiplier = entry.get("loss_multiplier", 1.0)
    _number(where, "loss_multiplier", multiplier, integer=False, minimum=0, strict=False)
    for field in ("batch_size", "max_tokens", "num_samples", "max_num_images"):
        if entry.get(field) is not None:
            _number(where, field, entry[field], integer=True, minimum=1, strict=False)
    image_prefix = entry.get("image_prefix")
    corpus = CorpusConfig(
        dataset_type=str(entry["type"]),
        shards=_location(entry["shards"], base),
        image_prefix=None if image_prefix is None else _location(image_prefix, base),
        batch_size=entry["batch_size"],
        max_tokens=entry["max_tokens"],
        num_samples=entry.get("num_samples") or 0,
        max_num_images=entry.get("max_num_images") or defaults["max_num_images"],
        sim_threshold=defaults["sim_threshold"],
        workers=defaults["workers"],
        seed=defaults["seed"],
        resampled=defaults["resampled"],
    )
    return MixtureSource(name, corpus, weight, float(multiplier))


def load_mixture(path: str | Path, **defaults) -> MixtureConfig:
    """The mixture a spec file describes. `defaults`: workers, seed, resampled, max_num_images,
    sim_threshold (from the command line). Raises MixtureError naming the source and field."""
    path = Path(path)
    spec = _read(path)
    if not isinstance(spec, dict):
        raise MixtureError(f"--mixture {path}: expected a mapping with 'steps' and 'sources'")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise MixtureError(
            f"--mixture {path}: unknown key(s) {unknown}; known: {sorted(SPEC_KEYS)}"
        )
    where = f"--mixture {path}"
    if "steps" not in spec:
        raise MixtureError(f"{where}: missing 'steps' (micro-steps per epoch of the run)")
    steps = _number(where, "steps", spec["steps"], integer=True, minimum=1, strict=False)
    entries = spec.get("sources")
    if not isinstance(entries, list) or not entries:
        raise MixtureError(f"{where}: 'sources' must be a non-empty list of sources")
    base = path.resolve().parent
    sources = tuple(_source(entry, i, base, path, defaults) for i, entry in enumerate(entries))
    names = [source.name for source in sources]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise MixtureError(f"{where}: source names must be unique; repeated: {duplicates}")
    mixture = MixtureConfig(str(path), steps, sources)
    if not mixture.drawn:
        raise MixtureError(
            f"{where}: no interleaved or text source (with a weight) to draw each step's batch from"
        )
    if any(s.kind == "text" for s in sources) and not mixture.every_step:
        raise MixtureError(
            f"{where}: a text source needs a pair source (laion / laion_table) beside it: its "
            "batches give the vision side no gradient, the pair batch of every step does"
        )
    if all(s.loss_multiplier == 0 for s in sources):
        raise MixtureError(f"{where}: every loss_multiplier is 0: nothing would be trained")
    for source in sources:  # an s3:// address that cannot be parsed is named here, not later
        for value in (source.corpus.shards, source.corpus.image_prefix):
            if value is not None and "s3://" in value:
                try:
                    parse_location(value)
                except ValueError as error:
                    raise MixtureError(f"{where}: source {source.name!r}: {error}") from None
    return mixture


# --- the draw -------------------------------------------------------------------------------


class SourceDraw:
    """Which drawn source each micro-step takes its batch from: a seeded, resumable draw with
    probabilities proportional to the weights. The same `seed` gives the same sequence on every
    rank."""

    def __init__(self, names: list[str], weights: list[float], seed: int):
        self.names = list(names)
        total = float(sum(weights))
        self.probabilities = np.array([w / total for w in weights], dtype=np.float64)
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, DRAW_STREAM])))
        self.counts = dict.fromkeys(self.names, 0)

    def next(self) -> str:
        index = int(self.rng.choice(len(self.names), p=self.probabilities))
        name = self.names[index]
        self.counts[name] += 1
        return name

    def state_dict(self) -> dict:
        return {"generator": self.rng.bit_generator.state, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        if sorted(state["counts"]) != sorted(self.names):
            raise ValueError(
                f"The saved draw is over sources {sorted(state['counts'])}, this mixture's are "
                f"{sorted(self.names)}"
            )
        self.rng.bit_generator.state = state["generator"]
        self.counts = dict(state["counts"])


CORPUS_SHARD_FLAGS = ("omnicorpus_shards", "obelics_shards", "mmc4_shards", "laion_shards")


def mixture_from_flags(args) -> MixtureConfig | None:
    """The mixture `--mixture` names (None without it), with the command line's --workers,
    --seed, --dataset_resampled, --mmc4_max_num_images and --mmc4_textsim_threshold. Raises
    MixtureError, also when corpus flags that the mixture replaces are given beside it."""
    if not args.mixture:
        return None
    given = [f"--{flag}" for flag in CORPUS_SHARD_FLAGS if getattr(args, flag, None)]
    if given:
        raise MixtureError(
            f"--mixture lists the sources; {', '.join(given)} would be ignored: name those "
            "shards in the mixture file instead"
        )
    return load_mixture(
        args.mixture,
        workers=args.workers,
        seed=args.seed,
        resampled=args.dataset_resampled,
        max_num_images=args.mmc4_max_num_images,
        sim_threshold=args.mmc4_textsim_threshold,
    )
