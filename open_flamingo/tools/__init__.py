"""Command-line tools' code and small offline helpers; docs/architecture.md lists them.

Each `scripts/<name>.py` of a tool is an entry point that calls `main` of the module here with
the same name, so that tests and other modules import the code instead of loading scripts.
"""
