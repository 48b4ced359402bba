"""The files of a training checkpoint, written durably and read without trusting them.

Reading: nothing is unpickled. Every `.pt` file loads with `torch.load(weights_only=True)`
(DeepSpeed's files with the three DeepSpeed classes they hold allowed as well), JSON files are
JSON. A file that cannot be read raises `CheckpointError` naming the file and the problem:
truncated, not a torch file, a Python object a safe load refuses (and which one), bad JSON.

Writing: each file is written through a file object, flushed and fsynced, so a full disk
raises `OSError(ENOSPC)` ("No space left on device", with the file and folder) instead of
torch's "unexpected pos", and a published checkpoint is on disk before it is renamed.

Verifying: `manifest.json` lists every file of a checkpoint with its size and CRC-32;
`verify_checkpoint` reports the first file that is missing, cut short or changed.
"""

import contextlib
import json
import os
import pickle
import re
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

MANIFEST = "manifest.json"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_CHUNK = 1 << 24


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


class CheckpointWriteError(Exception):
    """A checkpoint file that could not be written (the message names the file and folder)."""


# --- writing ---------------------------------------------------------------------------------


def _open_for_writing(path: Path):
    """The file object a checkpoint file is written through (tests put /dev/full here)."""
    return open(path, "wb")


def write_error(error: OSError, path: Path) -> CheckpointWriteError:
    """`error` while writing `path`, said plainly: 'No space left on device while writing ...'."""
    reason = error.strerror or str(error)
    return CheckpointWriteError(f"{reason} while writing {path.name} (folder {path.parent})")


def _write(path: Path, dump) -> None:
    try:
        with _open_for_writing(path) as out:
            dump(out)
            out.flush()
            os.fsync(out.fileno())
    except (OSError, RuntimeError) as error:
        # torch.save's zip writer answers a failed write with its own RuntimeError ("unexpected
        # pos ...") while the OSError saying why is being handled: report that one.
        cause = error
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            message = f"{error} while writing {path.name} (folder {path.parent})"
            raise CheckpointWriteError(message) from error
        raise write_error(cause, path) from error


def save_file(obj, path: Path) -> None:
    """`torch.save(obj)` to `path`, flushed and fsynced. Raises CheckpointWriteError."""
    _write(Path(path), lambda out: torch.save(obj, out))


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path`, flushed and fsynced. Raises CheckpointWriteError."""
    _write(Path(path), lambda out: out.write(text.encode()))


def fsync_folder(path: Path) -> None:
    """Make the entries of folder `path` (new files, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading ---------------------------------------------------------------------------------


def deepspeed_globals() -> list:
    """The classes DeepSpeed's checkpoint files hold besides tensors and containers."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, fragment_address]


def _refusal(error: pickle.UnpicklingError, path: Path) -> str:
    """Why a weights-only load failed: the Python object it refused (module-qualified where the
    file's index can be read), or that the file is no torch file."""
    found = _GLOBAL.search(str(error))
    if not found:
        return "it is not a file that torch.save wrote (corrupt, or another format)"
    name = found[1]
    if _is_zip(path):
        with contextlib.suppress(Exception):  # the message's short name is the fallback
            name = torch.serialization.get_unsafe_globals_in_checkpoint(path)[0]
    return (
        f"it holds a Python object that a weights-only load refuses ({name}); it was not "
        "loaded, since unpickling it could run code"
    )


def load_file(path: Path, *, allowed_globals=(), tensor_data: bool = True):
    """`torch.load(path, weights_only=True)` on the CPU, with `allowed_globals` allowed too.
    `tensor_data=False` memory-maps the tensors instead of reading them (to check a large file).
    Raises CheckpointError naming the file and the problem."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            mmap = not tensor_data and _is_zip(path)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path}: {_refusal(error, path)}") from None
    except EOFError:
        raise CheckpointError(f"{path}: the file ends early (empty or truncated)") from None
    except RuntimeError as error:
        first_line = str(error).split(". ")[0]
        raise CheckpointError(f"{path}: corrupt or truncated ({first_line})") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror or error})") from None
    except Exception as error:  # what else unpickling arbitrary bytes raises
        raise CheckpointError(
            f"{path}: it is not a file that torch.save wrote ({type(error).__name__}: {error})"
        ) from None


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(4) == b"PK\x03\x04"


def read_json(path: Path):
    """The JSON content of `path`. Raises CheckpointError naming the file and the problem."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror or error})") from None


def check_deepspeed_files(folder: Path) -> None:
    """Refuse DeepSpeed's files under `folder` unless each loads weights-only (DeepSpeed itself
    unpickles them with `weights_only=False`): call before DeepSpeed reads them."""
    for path in sorted(Path(folder).rglob("*.pt")):
        load_file(path, allowed_globals=deepspeed_globals(), tensor_data=False)


# --- non-finite values -----------------------------------------------------------------------


def named_tensors(obj, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) for every tensor in nested dicts / lists / tuples."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, list | tuple):
        for index, value in enumerate(obj):
            yield from named_tensors(value, f"{prefix}.{index}" if prefix else str(index))


def first_nonfinite(obj) -> str | None:
    """The name of the first floating-point tensor in `obj` holding a NaN or infinity."""
    for name, tensor in named_tensors(obj):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


# --- the manifest ----------------------------------------------------------------------------


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _files(folder: Path) -> list[str]:
    names = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(name for name in names if name != MANIFEST)


def write_manifest(folder: Path) -> None:
    """Write `manifest.json`: the size and CRC-32 of every other file under `folder`."""
    folder = Path(folder)
    entries = {}
    for name in _files(folder):
        path = folder / name
        entries[name] = {"size": path.stat().st_size, "crc32": _crc32(path)}
    write_text(folder / MANIFEST, json.dumps({"files": entries}, indent=1))


def verify_checkpoint(folder: Path) -> None:
    """Check every file of a checkpoint against its manifest. Raises CheckpointError naming the
    first file that is missing, has another size or content, or is not listed."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise CheckpointError(
            f"{folder}: no {MANIFEST}, so it is incomplete or was written by an older version of "
            "this trainer (resume it with that version, or start a new run from its weights with "
            f"--load_from_pretrained {folder / 'checkpoint.pt'})"
        )
    manifest = read_json(folder / MANIFEST)
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(entries, dict):
        raise CheckpointError(f"{folder / MANIFEST}: not a manifest (no 'files' table)")
    for name in _files(folder):
        if name not in entries:
            raise CheckpointError(f"{folder / name}: not in {MANIFEST}; it was added after saving")
    for name, entry in entries.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise CheckpointError(
                f"{path}: {size} bytes where {entry.get('size')} were written (truncated or "
                "changed)"
            )
        if _crc32(path) != entry.get("crc32"):
            raise CheckpointError(f"{path}: its content changed since it was written (CRC-32)")
