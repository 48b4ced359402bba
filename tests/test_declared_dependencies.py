"""Every third-party module the package imports is declared in the requirements of the install
that needs it: the model's (`pip install -e .`) for open_flamingo/src, the extras for the rest."""

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "open_flamingo"
# which requirement files an install of each subpackage has
INSTALLS = {
    "src": ["requirements.txt"],
    "data": ["requirements.txt", "requirements-training.txt"],
    "train": ["requirements.txt", "requirements-training.txt"],
    "eval": ["requirements.txt", "requirements-eval.txt"],
}


def declared(files: list[str]) -> set[str]:
    names = set()
    for name in files:
        for line in (REPO / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                names.add(canonical(re.split(r"[<>=!~\[ ;]", line)[0]))
    return names


def canonical(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def top_level_imports(path: Path) -> set[str]:
    """Absolute imports at any depth (lazy ones inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"open_flamingo", "__future__"}


def test_every_imported_distribution_is_declared_for_its_install():
    distributions = packages_distributions()
    problems = []
    for subpackage, files in INSTALLS.items():
        allowed = declared(files)
        for path in sorted((PACKAGE / subpackage).rglob("*.py")):
            for module in sorted(top_level_imports(path)):
                owners = {canonical(d) for d in distributions.get(module, [module])}
                if not owners & allowed:
                    problems.append(f"{path.relative_to(REPO)} imports {module} ({owners})")
    assert not problems, "not declared for the install that needs it:\n" + "\n".join(problems)


def test_the_check_sees_an_undeclared_import(tmp_path):
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    import webdataset\n    from sklearn import metrics\n")
    assert top_level_imports(module) == {"webdataset", "sklearn"}
    assert "scikit-learn" not in declared(["requirements.txt"])
