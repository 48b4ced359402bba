"""open_flamingo: OpenFlamingo on current torch / transformers 5.x, with OmniCorpus-style pre-training."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


REQUIRED = read_requirements("requirements.txt")
TRAINING = read_requirements("requirements-training.txt")
EVAL = read_requirements("requirements-eval.txt")

setup(
    name="open_flamingo",
    version="3.0.0.dev0",
    description="OpenFlamingo re-implemented on transformers 5.x, with OmniCorpus-style pre-training",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["open_flamingo", "open_flamingo.*"]),
    python_requires=">=3.10",
    install_requires=REQUIRED,
    extras_require={
        "training": TRAINING,
        "eval": EVAL,
        "all": sorted(set(TRAINING + EVAL)),
    },
)
