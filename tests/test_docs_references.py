"""Every file, module and import the README and docs/ name exists (issue 18): a doc that names
a moved or deleted file, or an import that fails, is caught here rather than by a reader."""

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PACKAGE = REPO / "open_flamingo"
# where a path that starts with one of these is relative to
ROOTS = {
    **{name: REPO for name in ("open_flamingo", "scripts", "tests", "docs", "accelerate_configs")},
    **{name: REPO for name in (".ci", "Makefile", "setup.py", "environment.yml")},
    **{name: PACKAGE for name in ("src", "train", "data", "eval", "demo", "benchmarks", "tools")},
    **{name: REPO / "scripts" for name in ("slurm", "ci")},
}
# files of other projects, or that runs write, which the docs name on purpose
NOT_OURS = {
    "download_images.py",  # mmc4's image download script
}
EXTENSIONS = (".py", ".md", ".yaml", ".yml", ".sh", ".sbatch", ".txt", ".json", ".toml")


def inline_code() -> list[tuple[str, str]]:
    """(doc name, text) of every `inline code` span (fenced blocks excluded)."""
    spans = []
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        spans += [(doc.name, span) for span in re.findall(r"`([^`\n]+)`", text)]
    return spans


def code_blocks(language: str) -> list[tuple[str, str]]:
    blocks = []
    for doc in DOCS:
        pattern = rf"```{language}\n(.*?)```"
        blocks += [(doc.name, b) for b in re.findall(pattern, doc.read_text(), flags=re.S)]
    return blocks


def defines(path: Path, name: str) -> bool:
    """Whether the module at `path` defines or imports `name` at its top level."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((alias.asname or alias.name).split(".")[0] == name for alias in node.names):
                return True
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
    return False


def path_problem(token: str) -> str | None:
    """Why the repository path `token` names nothing (None if it does, or is not a path)."""
    token = token.rstrip("/").split("::")[0]
    first = token.split("/")[0]
    if first not in ROOTS or any(c in token for c in "<>*{ "):
        return None
    path = ROOTS[first] / token
    if path.exists():
        return None
    if token.endswith(EXTENSIONS):
        return f"{token}: no such file"
    # `train/step.TrainStep`, `train/backend/choose_backend`: an attribute of a module
    stem, _, attribute = token.rpartition(".") if "." in token.split("/")[-1] else ("", "", "")
    if stem and (ROOTS[first] / f"{stem}.py").is_file():
        module = ROOTS[first] / f"{stem}.py"
        return None if defines(module, attribute) else f"{token}: {module.name} has no {attribute}"
    package, _, attribute = token.rpartition("/")
    init = ROOTS[first] / package / "__init__.py"
    if init.is_file():
        return None if defines(init, attribute) else f"{token}: {package} has no {attribute}"
    return f"{token}: no such file or folder"


def our_files() -> set[str]:
    return {path.name for path in REPO.rglob("*") if ".venv" not in path.parts}


def test_every_path_the_docs_name_exists():
    problems = []
    names = our_files()
    for doc, span in inline_code():
        for token in span.split():
            token = token.split("(")[0].strip("),;:'\"")
            problem = path_problem(token)
            bare = "/" not in token and token.endswith(".py") and not set(token) & set("<>")
            if bare and token not in names and token not in NOT_OURS:
                problem = f"{token}: no file of this name in the repository"
            if problem:
                problems.append(f"{doc}: {problem}")
    assert not problems, "\n".join(problems)


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent of it is a module, not a package
        return False


def test_every_module_the_docs_name_imports():
    problems = []
    modules = set()
    for doc, span in inline_code():
        modules |= {(doc, m) for m in re.findall(r"\b(open_flamingo(?:\.\w+)+)", span)}
    for doc, block in code_blocks("bash") + code_blocks("sh") + code_blocks(""):
        modules |= {(doc, m) for m in re.findall(r"-m (open_flamingo(?:\.\w+)+)", block)}
    for doc, dotted in sorted(modules):
        # the longest importable prefix; the rest must be attributes of it
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            if importable(".".join(parts[:cut])):
                break
        target = importlib.import_module(".".join(parts[:cut]))
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                problems.append(f"{doc}: {dotted}: no {attribute}")
                break
            target = getattr(target, attribute)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("statement", sorted({
    line.strip()
    for _, block in code_blocks("python") + inline_code()
    for line in block.splitlines()
    if re.match(r"\s*(from open_flamingo[\w.]* import [\w, ]+$|import open_flamingo[\w.]*$)", line)
}))  # fmt: skip
def test_every_import_the_docs_show_works(statement):
    exec(statement, {})
