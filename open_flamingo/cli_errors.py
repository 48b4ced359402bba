"""How the command lines report what is wrong with a command: every problem at once."""

import argparse


def exit_with_problems(parser: argparse.ArgumentParser, problems: list[str]) -> None:
    """Exit with status 2 (argparse's for a bad command line), each problem on its own line."""
    if len(problems) == 1:
        text = problems[0]
    else:
        text = f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)
    parser.exit(2, f"{parser.prog}: error: {text}\n(`{parser.prog} --help` lists the flags)\n")
