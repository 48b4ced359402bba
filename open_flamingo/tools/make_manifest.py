"""Write a shard manifest: the shards a spec names, with the readable records of each.

SPEC is what `--<type>_shards` accepts: a directory or S3 prefix, a brace pattern
(`s3://bucket/laion/{00000..00099}.tar`), a manifest, or several of these joined with `::`.
Shards are read in parallel (`--threads`); records are counted as the loader reads them, and
lines / records it would skip are reported per shard and reason. The manifest can then be given
to the loader instead of the spec (`--omnicorpus_shards manifest.json`).

Examples:
    python scripts/make_manifest.py /data/omnicorpus --out /data/omnicorpus/manifest.json
    python scripts/make_manifest.py 's3://bucket/laion/{00000..00099}.tar' \
        --out s3://bucket/laion/manifest.json --threads 32

Without --out the manifest is printed to stdout (and the summary to stderr). The exit status is
1 when some shard could not be read (it is listed with its error), else 0.
"""

import argparse
import json
import sys

from open_flamingo.data.manifest import build_manifest
from open_flamingo.data.storage import StorageError, write_bytes

MAX_LISTED = 20  # shards with skips or errors listed in the summary


def summary_lines(manifest: dict) -> list[str]:
    """A short human-readable summary: totals, then the shards with errors or skipped records."""
    shards = manifest["shards"]
    lines = [
        f"{len(shards)} shards, {manifest['records']} records, {manifest['bytes']} bytes, "
        f"{manifest['errors']} unreadable"
    ]
    if manifest["skipped"]:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(manifest["skipped"].items()))
        lines.append(f"skipped: {reasons}")
    flagged = [entry for entry in shards if entry.get("error") or entry.get("skipped")]
    for entry in flagged[:MAX_LISTED]:
        if "error" in entry:
            lines.append(f"  {entry['uri']}: UNREADABLE: {entry['error']}")
        else:
            reasons = ", ".join(f"{r}={n}" for r, n in sorted(entry["skipped"].items()))
            lines.append(f"  {entry['uri']}: {entry['records']} records; skipped {reasons}")
    if len(flagged) > MAX_LISTED:
        lines.append(f"  ... and {len(flagged) - MAX_LISTED} more shards with skips or errors")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="directory / S3 prefix, brace pattern, manifest, or A::B")
    parser.add_argument("--out", help="where to write the manifest (local path or s3://...)")
    parser.add_argument("--threads", type=int, default=8, help="shards read in parallel")
    parser.add_argument(
        "--retry-deadline",
        type=float,
        default=60.0,
        help="seconds to retry a shard read on transient storage errors",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if not args.retry_deadline >= 0:  # NaN too
        parser.error("--retry-deadline must be a number of seconds >= 0")
    try:
        manifest = build_manifest(args.spec, args.threads, args.retry_deadline)
    except (ValueError, StorageError) as error:  # nothing found; a bad or unreadable manifest
        parser.exit(2, f"error: {error}\n")
    text = json.dumps(manifest, indent=1) + "\n"
    if args.out:
        write_bytes(args.out, text.encode("utf-8"))
        summary = sys.stdout
    else:
        sys.stdout.write(text)
        summary = sys.stderr
    for line in summary_lines(manifest):
        print(line, file=summary)
    if args.out:
        print(f"wrote {args.out}", file=summary)
    return 1 if manifest["errors"] else 0
