"""OmniCorpus's own training flags (its `train_omnicorpus.py`), each with its OmniCorpus meaning,
mapped onto this trainer's flags here, and only here, so that an OmniCorpus command line runs
as it is.

| OmniCorpus's flag | its meaning | here |
|---|---|---|
| `--obelics_data_path P` | the interleaved documents (`images` / `texts` lists; JSONL, `.json` arrays, parquet) | `--interleaved_dataset omnicorpus --omnicorpus_shards P` (and `--obelics_shards P`) |
| `--obelics_image_path I` | their images, objects named sha256(url) | `--omnicorpus_image_prefix I` (and `--obelics_image_prefix I`) |
| `--use_clip_sim` | read the "with similarities" form instead (`sentences` / `matrix` / `images_info`) | `--interleaved_dataset omnicorpus_sim` |
| `--laionen2b_data_path P` | LAION-En2B rows `{"image", "caption"}` in `0000000.txt`, ... | `--laion_dataset laion_table --laion_shards P` |
| `--laionen2b_image_path I` | where the rows' image objects are | `--laion_image_prefix I` |
| `--use_iterable_dataset` | every loader worker reads shards of its own | always so here: accepted, changes nothing |
| `--resume_from_checkpoint` (bare) | resume from the newest checkpoint of the run | `--resume_from_checkpoint latest` |
| `--resume_from_steps N` | resume from the checkpoint of step N (0: none) | `--resume_from_checkpoint <run>/checkpoint-N` |
| `--precision amp_bfloat16` | bfloat16 autocast | `--precision amp_bf16` |
| `--save_checkpoints_to_wandb` | upload each checkpoint to the wandb run | the same (needs `--report_to_wandb`) |
| `--report_to_wandb`, no `--wandb_project` | wandb's default project | the same |

OmniCorpus's dataset type names also work in `get_data` (`laionen2b`, `omnicorpus_w_similarities`;
open_flamingo.data.formats). OmniCorpus and OBELICS documents share one schema, so the
documents of `--obelics_data_path` are also what `--interleaved_dataset obelics` reads. Giving
one of these flags together with the flag it maps onto is refused, as is what OmniCorpus itself
refuses (resuming both ways at once, saving checkpoints to wandb without reporting to it).
"""

import argparse
from pathlib import Path

from open_flamingo.data.formats import ALIASES

from .checkpointing import LATEST, checkpoint_steps, is_complete

PRECISION_ALIASES = {"amp_bfloat16": "amp_bf16"}


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add the flags only OmniCorpus has (the others are this trainer's own)."""
    group = parser.add_argument_group(
        "OmniCorpus's flags (see open_flamingo/train/omnicorpus_flags.py)"
    )
    group.add_argument("--obelics_data_path", default=None, help="= --omnicorpus_shards")
    group.add_argument("--obelics_image_path", default=None, help="= --omnicorpus_image_prefix")
    group.add_argument("--laionen2b_data_path", default=None, help="= --laion_shards (rows)")
    group.add_argument("--laionen2b_image_path", default=None, help="= --laion_image_prefix")
    group.add_argument(
        "--use_clip_sim", action="store_true", help="= --interleaved_dataset omnicorpus_sim"
    )
    group.add_argument(
        "--use_iterable_dataset",
        action="store_true",
        help="each loader worker reads its own shards: always so here",
    )
    group.add_argument(
        "--resume_from_steps",
        type=int,
        default=0,
        help="resume from <run>/checkpoint-N (0: no)",
    )
    group.add_argument(
        "--save_checkpoints_to_wandb",
        action="store_true",
        help="upload each checkpoint's checkpoint.pt to the wandb run",
    )


def _move(args, parser, source: str, target: str) -> None:
    """`--source` means `--target`; both at once is refused."""
    value = getattr(args, source)
    if value is None:
        return
    if getattr(args, target) is not None:
        parser.error(f"--{source} is OmniCorpus's name for --{target}: give one of them")
    setattr(args, target, value)


def _dataset(args, parser, role: str, wanted: str, because: str, also: str = "") -> None:
    """Set --<role>_dataset to `wanted` unless it is `also`, refusing any other one."""
    name = f"{role}_dataset"
    current = getattr(args, name)
    if current not in (None, wanted, also):
        parser.error(f"{because} reads --{name} {wanted}, not {current}")
    setattr(args, name, current or wanted)


def apply(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Translate OmniCorpus's flags in `args` into this trainer's (see the table above)."""
    for role in ("interleaved", "laion"):
        name = f"{role}_dataset"
        setattr(args, name, ALIASES.get(getattr(args, name), getattr(args, name)))
    if args.use_clip_sim:
        _dataset(args, parser, "interleaved", "omnicorpus_sim", "--use_clip_sim")
    elif args.obelics_data_path is not None:
        _dataset(args, parser, "interleaved", "omnicorpus", "--obelics_data_path", "obelics")
    for kind in ("shards", "image_prefix"):
        source = "obelics_data_path" if kind == "shards" else "obelics_image_path"
        if getattr(args, source) is not None and getattr(args, f"obelics_{kind}") is not None:
            parser.error(f"--{source} is OmniCorpus's name for --obelics_{kind}: give one of them")
        if getattr(args, f"obelics_{kind}") is None:
            setattr(args, f"obelics_{kind}", getattr(args, source))
    _move(args, parser, "obelics_data_path", "omnicorpus_shards")
    _move(args, parser, "obelics_image_path", "omnicorpus_image_prefix")
    if args.laionen2b_data_path is not None:
        _dataset(args, parser, "laion", "laion_table", "--laionen2b_data_path")
        if args.laionen2b_image_path is None and args.laion_image_prefix is None:
            parser.error(
                "--laionen2b_data_path holds rows that name image objects: give "
                "--laionen2b_image_path, where they are (img2dataset tars, with their images "
                "inside, are --laion_shards)"
            )
    _move(args, parser, "laionen2b_data_path", "laion_shards")
    _move(args, parser, "laionen2b_image_path", "laion_image_prefix")
    args.interleaved_dataset = args.interleaved_dataset or "omnicorpus"
    args.laion_dataset = args.laion_dataset or "laion"
    args.precision = PRECISION_ALIASES.get(args.precision, args.precision)
    if args.save_checkpoints_to_wandb and not args.report_to_wandb:
        parser.error("--save_checkpoints_to_wandb needs --report_to_wandb")
    _resume_from_steps(args, parser)
    return args


def _resume_from_steps(args, parser) -> None:
    steps = args.resume_from_steps
    if steps == 0:
        return
    if steps < 0:
        parser.error(f"--resume_from_steps must be >= 0 (got {steps}; 0 means no resume)")
    if args.resume_from_checkpoint is not None:
        parser.error(
            "--resume_from_steps N resumes from step N's checkpoint and --resume_from_checkpoint "
            "from another one: give one of them"
        )
    run_dir = Path(args.external_save_dir or ".") / args.run_name
    path = run_dir / f"checkpoint-{steps}"
    if not is_complete(path):
        found = checkpoint_steps(run_dir)
        parser.error(
            f"--resume_from_steps {steps}: {run_dir} has no complete checkpoint of step {steps} "
            f"(it has {', '.join(map(str, found)) or 'none'}); pass one of those, or "
            f"--resume_from_checkpoint {LATEST} for the newest"
        )
    args.resume_from_checkpoint = str(path)
