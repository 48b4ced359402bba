"""`pip install -e .` without extras: the model imports, and each command line names the extra
it needs instead of failing with a bare ModuleNotFoundError.

The install without extras is made real, not mocked: a site folder holding links to everything
of this venv's site-packages except the files of the distributions only the extras bring (those
of the base requirements' dependency closure stay), and python run with -S on it."""

import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution, requires
from pathlib import Path

import pytest

from open_flamingo.extras import EXTRA_MODULES, missing_modules

REPO = Path(__file__).resolve().parents[1]


def requirement_names(text: str) -> list[str]:
    return [
        re.split(r"[<>=!~\[ ;]", line.split("#")[0].strip())[0]
        for line in text.splitlines()
        if line.split("#")[0].strip()
    ]


def dependency_closure(names: list[str]) -> set[str]:
    """The distributions `names` install, with everything they require (no extras of theirs)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            needed = requires(name) or []
        except PackageNotFoundError:
            continue
        todo += [requirement_names(r)[0] for r in needed if "extra ==" not in r]
    return seen


@pytest.fixture(scope="module")
def site_without_extras(tmp_path_factory) -> Path:
    base = dependency_closure(requirement_names((REPO / "requirements.txt").read_text()))
    extras = set()
    for name in ("requirements-training.txt", "requirements-eval.txt"):
        extras |= {n.lower() for n in requirement_names((REPO / name).read_text())}
    hidden = set()
    for name in extras - base:
        hidden |= {Path(str(f)).parts[0] for f in distribution(name).files or []}
    site_packages = Path(distribution("torch").locate_file(""))
    site = tmp_path_factory.mktemp("site_without_extras")
    for entry in site_packages.iterdir():
        if entry.name not in hidden and not entry.name.endswith(".pth"):
            (site / entry.name).symlink_to(entry)
    return site


def run_without_extras(site: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-S", *args],
        env={"PYTHONPATH": f"{REPO}:{site}", "PATH": "/usr/bin:/bin"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_site_hides_every_module_the_extras_bring(site_without_extras):
    probe = "from open_flamingo.extras import missing_modules as m; print(m('training'), m('eval'))"
    result = run_without_extras(site_without_extras, "-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == f"{list(EXTRA_MODULES['training'])} " + str(
        list(EXTRA_MODULES["eval"])
    )


@pytest.mark.parametrize(
    "module, extra",
    [("open_flamingo.train.train_omnicorpus", "training"), ("open_flamingo.eval.evaluate", "eval")],
)
@pytest.mark.parametrize("flags", [["--help"], ["--lm_path", "x"]])
def test_a_command_line_without_its_extra_names_the_install(
    site_without_extras, module, extra, flags
):
    result = run_without_extras(site_without_extras, "-m", module, *flags)
    assert result.returncode == 1
    assert f"needs the '{extra}' extra" in result.stderr
    assert f"pip install -e '.[{extra}]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_model_needs_no_extra(site_without_extras):
    probe = (
        "import open_flamingo\n"
        "from open_flamingo import create_model_and_transforms, load_model_and_transforms\n"
        "import open_flamingo.src.flamingo\n"
        "print('ok')"
    )
    result = run_without_extras(site_without_extras, "-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_this_environment_has_every_extra():
    assert missing_modules("training") == [] and missing_modules("eval") == []
