"""The optional installs (setup.py's extras), and the check each command line makes first that
the one it needs is installed, so that a plain `pip install -e .` gets told what to install
instead of a bare ModuleNotFoundError from deep inside an import."""

from importlib.util import find_spec

# extra -> the modules it installs that its command lines import whatever their flags
EXTRA_MODULES = {
    "training": ("accelerate", "braceexpand", "boto3", "botocore", "pyarrow"),
    "eval": ("pycocoevalcap", "nltk", "inflection", "sklearn"),
}


def missing_modules(extra: str) -> list[str]:
    missing = []
    for module in EXTRA_MODULES[extra]:
        try:
            found = find_spec(module) is not None
        except (ImportError, ValueError):  # a broken or blocked install counts as absent
            found = False
        if not found:
            missing.append(module)
    return missing


def require(extra: str, command: str) -> None:
    """Exit with the install command when `extra` is not (wholly) installed."""
    missing = missing_modules(extra)
    if missing:
        raise SystemExit(
            f"error: {command} needs the '{extra}' extra, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed. Install it with "
            f"`pip install -e '.[{extra}]'` in a checkout, or `pip install "
            f"'open_flamingo[{extra}]'` (`.[all]` installs every extra)."
        )
