"""Plot the losses of a training run's metrics.jsonl to a PNG loss curve.

Usage:
    python scripts/plot_metrics.py runs/demo/run/metrics.jsonl [-o loss.png]

Draws the total loss and one curve per source that the file logs a loss of (`loss_<source>`:
the interleaved and LAION losses, or each source of a `--mixture` run, drawn at the steps whose
logging window took a batch of it) against the optimizer step. A resumed run that logged a step again is plotted with that step's last row
(`open_flamingo.train.metrics.read_metrics`). The default output is `loss.png` beside the
metrics file.
"""

import argparse
import json
import math
from pathlib import Path

LABELS = {"loss": "total (weighted)", "loss_interleaved": "interleaved", "loss_laion": "LAION"}
SOURCE_STYLES = ("--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 3)))


def label(key: str) -> str:
    """The legend label of a loss key: `loss_<source>` -> the source's name."""
    return LABELS.get(key, key.removeprefix("loss_"))


def loss_keys(rows: list[dict]) -> list[str]:
    """ "loss", then every `loss_<source>` key of the rows in the order they first appear."""
    keys = ["loss"]
    for row in rows:
        keys += [key for key in row if key.startswith("loss_") and key not in keys]
    return keys


class MetricsError(ValueError):
    """The metrics file is missing, empty or not a metrics.jsonl."""


def load_series(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """{metrics key: (steps, values)} of the total loss and of every source's loss logged.

    Raises:
        MetricsError: the file is missing, unreadable, not JSON lines with a `step`, or has no
            finite loss value.
    """
    from open_flamingo.train.metrics import read_metrics  # imports torch: only when needed

    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"{path}: no such file")
    try:
        rows = read_metrics(path)
    except json.JSONDecodeError as error:
        raise MetricsError(f"{path}: not JSON lines ({error})") from error
    except (KeyError, TypeError) as error:
        raise MetricsError(f"{path}: a row has no 'step' ({error!r})") from error
    except (OSError, UnicodeDecodeError) as error:
        raise MetricsError(f"{path}: cannot be read ({error})") from error
    if not rows:
        raise MetricsError(f"{path}: no metrics rows (is the run still before its first log?)")
    series = {}
    for key in loss_keys(rows):
        points = [
            (int(row["step"]), float(row[key]))
            for row in rows
            if isinstance(row.get(key), int | float)
        ]
        if any(math.isfinite(value) for _, value in points):
            series[key] = ([step for step, _ in points], [value for _, value in points])
    if "loss" not in series:
        raise MetricsError(f"{path}: {len(rows)} rows, but none has a finite 'loss'")
    return series


def plot(series: dict[str, tuple[list[int], list[float]]], out: Path, title: str) -> Path:
    """Write the loss curve PNG to `out`; returns `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    sources = [key for key in series if key != "loss"]
    for index, key in enumerate(["loss", *sources]):
        if key not in series:
            continue
        style = "-" if key == "loss" else SOURCE_STYLES[(index - 1) % len(SOURCE_STYLES)]
        steps, values = series[key]
        marker = "o" if len(steps) < 30 else None
        axes.plot(steps, values, linestyle=style, marker=marker, markersize=3, label=label(key))
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="plot_metrics.py", description=__doc__.splitlines()[0])
    parser.add_argument("metrics", type=Path, help="a run's metrics.jsonl")
    parser.add_argument(
        "-o", "--out", type=Path, default=None, help="PNG to write (default: loss.png beside it)"
    )
    args = parser.parse_args(argv)
    out = args.out or args.metrics.with_name("loss.png")
    try:
        series = load_series(args.metrics)
    except MetricsError as error:
        parser.error(str(error))
    steps = series["loss"][0]
    title = f"{args.metrics.parent.name or 'run'}: steps {steps[0]}-{steps[-1]}"
    try:
        plot(series, out, title)
    except OSError as error:
        parser.error(f"cannot write {out}: {error}")
    first, last = series["loss"][1][0], series["loss"][1][-1]
    print(f"wrote {out} ({len(steps)} logged steps, loss {first:.3f} -> {last:.3f})")
    return out
