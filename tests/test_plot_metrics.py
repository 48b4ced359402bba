"""scripts/plot_metrics.py (open_flamingo/tools/plot_metrics.py): a metrics.jsonl (also of a
resumed run) -> a PNG loss curve; bad input fails with a clear message."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO
from open_flamingo.tools import plot_metrics

SCRIPT = REPO / "scripts" / "plot_metrics.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_metrics(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def row(step, loss, **extra):
    return {"step": step, "epoch": 0, "loss": loss, "lr": 1e-4, **extra}


def resumed_run_rows():
    """Steps 10-40; the run crashed after step 30 and resumed from a checkpoint at step 20, so
    steps 30 and 40 appear twice: the last row of each step counts."""
    rows = [
        row(step, 5.0 - step / 10, loss_interleaved=5.2 - step / 10, loss_laion=4.0 - step / 20)
        for step in (10, 20, 30)
    ]
    rows += [
        row(step, 4.5 - step / 20, loss_interleaved=4.6 - step / 20, loss_laion=3.9 - step / 40)
        for step in (30, 40)
    ]
    return rows


def test_plots_a_valid_png_of_a_resumed_run(tmp_path):
    metrics = write_metrics(tmp_path / "metrics.jsonl", resumed_run_rows())
    out = tmp_path / "plots" / "curve.png"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(metrics), "-o", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    assert "4 logged steps" in result.stdout and "4.000 -> 2.500" in result.stdout
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert 10_000 < len(data) < 2_000_000
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (800, 450)
        # not a blank canvas: the curves and axes draw many distinct colours
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 20


def test_last_row_of_a_repeated_step_wins_and_default_output(tmp_path):
    metrics = write_metrics(tmp_path / "metrics.jsonl", resumed_run_rows())
    series = plot_metrics.load_series(metrics)
    assert series["loss"] == ([10, 20, 30, 40], [4.0, 3.0, 3.0, 2.5])
    assert series["loss_laion"][0] == [10, 20, 30, 40]
    assert series["loss_laion"][1][2:] == [3.9 - 30 / 40, 3.9 - 40 / 40]

    out = plot_metrics.main([str(metrics)])  # default: loss.png beside the metrics
    assert out == tmp_path / "loss.png"
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_only_the_total_loss_is_enough(tmp_path):
    metrics = write_metrics(tmp_path / "metrics.jsonl", [row(1, 3.0), row(2, 2.0)])
    assert set(plot_metrics.load_series(metrics)) == {"loss"}
    out = plot_metrics.main([str(metrics), "-o", str(tmp_path / "l.png")])
    assert out.read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("", "no metrics rows"),
        ("\n  \n", "no metrics rows"),
        ('{"step": 1, "loss": 2.0}\n{"step": 2, "lo', "not JSON lines"),
        ('{"loss": 2.0}\n', "has no 'step'"),
        ('{"step": 1, "lr": 0.1}\n', "none has a finite 'loss'"),
        ('{"step": 1, "loss": NaN}\n', "none has a finite 'loss'"),
    ],
    ids=["missing", "empty", "blank", "truncated", "no-step", "no-loss", "nan-loss"],
)
def test_bad_input_fails_clearly(tmp_path, capsys, content, message):
    metrics = tmp_path / "metrics.jsonl"
    if content is not None:
        metrics.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        plot_metrics.main([str(metrics), "-o", str(tmp_path / "loss.png")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"plot_metrics.py: error: {metrics}: " in error
    assert message in error
    assert not (tmp_path / "loss.png").exists()


def test_command_line_error_exit_status(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "absent.jsonl")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "absent.jsonl: no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_output_fails_clearly(tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    write_metrics(metrics, [row(1, 2.0), row(2, 1.5)])
    with pytest.raises(SystemExit) as exit_info:
        plot_metrics.main([str(metrics), "-o", str(tmp_path)])  # a folder
    assert exit_info.value.code == 2
    assert f"error: cannot write {tmp_path}: " in capsys.readouterr().err


def test_a_mixture_run_gets_one_curve_per_source(tmp_path, monkeypatch):
    """Each step logs the loss of the drawn source only (None for the others) and the pair
    source's: every source becomes a curve of its own steps."""
    drawn = ["omnicorpus", "web", "omnicorpus", "obelics"]
    rows = []
    for step, name in enumerate(drawn, start=1):
        losses = {f"loss_{n}": None for n in ("omnicorpus", "obelics", "web")}
        losses[f"loss_{name}"] = 5.0 - step / 10
        rows.append(row(step, 4.0 - step / 10, **losses, loss_laion=3.0 - step / 10))
    metrics = write_metrics(tmp_path / "metrics.jsonl", rows)
    series = plot_metrics.load_series(metrics)
    assert list(series) == ["loss", "loss_omnicorpus", "loss_obelics", "loss_web", "loss_laion"]
    assert series["loss_omnicorpus"] == ([1, 3], [4.9, 4.7])
    assert series["loss_web"] == ([2], [4.8]) and series["loss_obelics"] == ([4], [4.6])
    drawn_curves = []
    original = plot_metrics.plot

    def record(series, out, title):
        import matplotlib.pyplot as plt

        monkeypatch.setattr(plt, "close", lambda figure: drawn_curves.extend(figure.axes[0].lines))
        return original(series, out, title)

    monkeypatch.setattr(plot_metrics, "plot", record)
    plot_metrics.main([str(metrics), "-o", str(tmp_path / "mix.png")])
    labels = [line.get_label() for line in drawn_curves]
    assert labels == ["total (weighted)", "omnicorpus", "obelics", "web", "LAION"]
    assert [list(line.get_xdata()) for line in drawn_curves][1:3] == [[1, 3], [4]]
    assert (tmp_path / "mix.png").read_bytes().startswith(PNG_SIGNATURE)
