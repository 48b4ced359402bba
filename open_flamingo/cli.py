"""What the command lines share: how they report what is wrong with a command (every problem at
once), and which log lines they show."""

import argparse
import logging


def exit_with_problems(parser: argparse.ArgumentParser, problems: list[str]) -> None:
    """Exit with status 2 (argparse's for a bad command line), each problem on its own line."""
    if len(problems) == 1:
        text = problems[0]
    else:
        text = f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)
    parser.exit(2, f"{parser.prog}: error: {text}\n(`{parser.prog} --help` lists the flags)\n")


def configure_logging(show_info: bool = True, fmt: str = "%(levelname)s %(name)s: %(message)s"):
    """This project's INFO lines (`show_info`: the main process), other libraries' only from
    WARNING up (open_clip announces every model it builds at INFO)."""
    logging.basicConfig(level=logging.WARNING, format=fmt)
    logging.getLogger("open_flamingo").setLevel(logging.INFO if show_info else logging.WARNING)
