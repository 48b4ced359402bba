"""What a user passes as a model or tokenizer path, turned into what `from_pretrained` reads.

Users pass Hugging Face ids (`anas-awadalla/mpt-1b-redpajama-200b`), model folders, `.gguf`
files, and, as OmniCorpus's command does, a folder of the Hugging Face cache itself:
`models--ORG--NAME/` with `refs/main` (a commit hash), `snapshots/<hash>/` (the model's files,
often symlinks into `blobs/`) and `blobs/`. `from_pretrained` on that folder fails (it has no
config.json at its top), so it is resolved here to the snapshot `refs/main` names.

A path that is on disk but is none of these, or that names a local folder that is missing, is
an error saying which, raised before anything is loaded: `from_pretrained` would otherwise take
it for a hub id and fail with a "repo id" or connection error.

The vision encoder's open_clip weights are named by a tag instead (`open_clip_pretrained`).
"""

import os
from pathlib import Path

# Files at the top of a folder `from_pretrained` reads (a model or a tokenizer).
PRETRAINED_FILES = (
    "config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
)
CACHE_PREFIX = "models--"


def _looks_local(path: str) -> bool:
    """A path the user meant as a file or folder on disk, not a hub id (`name`, `org/name`)."""
    if path.startswith(("/", "./", "../", "~")) or Path(path).name.startswith(CACHE_PREFIX):
        return True
    parts = Path(path).parts
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def _shown(folder: Path, limit: int = 8) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return "it is empty"
    return "it holds " + ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def cache_snapshot(folder: Path) -> Path:
    """The snapshot folder of a Hugging Face cache folder `models--ORG--NAME/`: the one
    `refs/main` names, or the only one there is."""
    snapshots = folder / "snapshots"
    ref = folder / "refs" / "main"
    if ref.is_file():
        commit = ref.read_text().strip()
        snapshot = snapshots / commit
        if not snapshot.is_dir():
            raise FileNotFoundError(
                f"{folder} is a Hugging Face cache folder whose refs/main names commit {commit}, "
                f"but {snapshot} does not exist: the download was incomplete. Download it again, "
                "or pass one of its snapshots/<hash> folders."
            )
        return snapshot
    found = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(
        f"{folder} is a Hugging Face cache folder without refs/main and with "
        f"{len(found)} snapshots ({', '.join(p.name for p in found) or 'none'}): pass the "
        "snapshots/<hash> folder to use."
    )


def resolve_pretrained_path(path: str | os.PathLike) -> str:
    """The id, folder or `.gguf` file `from_pretrained` should read for `path`.

    Hub ids and model folders come back unchanged; a Hugging Face cache folder becomes its
    snapshot. Raises FileNotFoundError for a missing local path and for a folder that is
    neither a model or tokenizer folder nor a cache folder, naming which it is.
    """
    text = os.fspath(path)
    local = Path(text).expanduser()
    if local.is_file():
        if local.suffix == ".gguf":
            return str(local)
        raise FileNotFoundError(
            f"{text} is a file, not a model folder: pass the folder that holds its config.json "
            "(or a .gguf file)."
        )
    if local.is_dir():
        if any((local / name).is_file() for name in PRETRAINED_FILES):
            return str(local)
        if (local / "snapshots").is_dir():
            return str(cache_snapshot(local))
        cached = sorted(p.name for p in local.glob(f"{CACHE_PREFIX}*") if p.is_dir())
        if cached:
            raise FileNotFoundError(
                f"{text} is a Hugging Face cache root, not one model: pass one of its "
                f"{CACHE_PREFIX}ORG--NAME folders ({', '.join(cached[:6])})."
            )
        raise FileNotFoundError(
            f"{text} is a folder but neither a model or tokenizer folder (no "
            f"{' / '.join(PRETRAINED_FILES[:3])}) nor a Hugging Face cache folder "
            f"({CACHE_PREFIX}ORG--NAME with refs/ and snapshots/); {_shown(local)}."
        )
    if _looks_local(text):
        raise FileNotFoundError(
            f"{text}: no such file or folder. Pass an existing model folder, a Hugging Face "
            f"cache folder ({CACHE_PREFIX}ORG--NAME) or a hub id such as "
            "anas-awadalla/mpt-1b-redpajama-200b."
        )
    return text


def open_clip_pretrained(tag: str | None) -> str | None:
    """open_clip's `pretrained` for a vision encoder tag as users write it: a tag ("openai") or
    weights file unchanged; "none" (any case), "" or None mean random initialisation (None).
    The type of the train and eval CLIs' --vision_encoder_pretrained, and what the RICES
    encoder applies to its tag."""
    if tag is None or tag.lower() in ("", "none"):
        return None
    return tag
