"""Reading the evaluation's JSON files with errors that say which file is wrong."""

import json
import os
from pathlib import Path


def read_json(path: str | os.PathLike | None, what: str):
    """The parsed JSON at `path`. `what` names the file in errors ("VQA questions", ...)."""
    if path is None:
        raise ValueError(f"No path given for the {what} file.")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} file {path} is not valid JSON: {error}") from error
