"""Convert MMC4 `jsonl.zip` shards and their image files into OpenFlamingo's MMC4 webdataset form.

Each output tar member `<key>.json` is one MMC4 document whose `image_info[i]` entries carry the
image file as `image_base64`, read from `<images>/<image_name>` or, where mmc4's download script
wrote one folder per docs shard, from `<images>/<shard stem>_images/<image_name>`. Images that
cannot be read are left without `image_base64` (the loader leaves them out) and counted;
documents that fail the MMC4 schema or have no readable image are skipped and counted.

Example:
    python scripts/convert_mmc4_to_wds.py --input /data/mmc4/docs --images /data/mmc4/images \
        --output s3://bucket/mmc4-wds --docs-per-shard 250
"""

import argparse
import base64
import json
import logging
from concurrent.futures import ThreadPoolExecutor

from open_flamingo.data.doc_types import image_uri
from open_flamingo.data.formats import mmc4_image_folder
from open_flamingo.data.mmc4 import parse_mmc4
from open_flamingo.data.shards import iter_records, tar_bytes
from open_flamingo.data.skips import SkipCounter, SkipSample
from open_flamingo.data.storage import (
    StorageError,
    list_files,
    parse_location,
    read_bytes,
    write_bytes,
)

logger = logging.getLogger("convert_mmc4_to_wds")
MMC4_SHARD_SUFFIXES = (".jsonl.zip", ".zip", ".jsonl")


def input_shards(input_uri: str) -> list[str]:
    """`input_uri` itself if it names a shard, else every MMC4 shard under it (sorted)."""
    if input_uri.lower().endswith(MMC4_SHARD_SUFFIXES):
        return [input_uri]
    return [name for name in list_files(input_uri) if name.lower().endswith(MMC4_SHARD_SUFFIXES)]


def _read_image(uri: str) -> bytes | StorageError:
    try:
        return read_bytes(uri)
    except StorageError as error:
        return error


def convert_mmc4_to_wds(
    input_uri: str,
    image_prefix: str,
    output_uri: str,
    *,
    docs_per_shard: int = 250,
    read_threads: int = 16,
) -> dict:
    """Convert every MMC4 shard under `input_uri`; returns {"shards", "docs", "images", "skips"}."""
    skips = SkipCounter()
    output = parse_location(output_uri)
    shards_written: list[str] = []
    members: list[tuple[str, bytes]] = []
    num_docs = num_images = 0

    def flush() -> None:
        name = str(output.join(f"{len(shards_written):06d}.tar"))
        write_bytes(name, tar_bytes(members))
        shards_written.append(name)
        logger.info("wrote %s (%d docs)", name, len(members))
        members.clear()

    with ThreadPoolExecutor(read_threads) as pool:
        for shard in input_shards(input_uri):
            try:
                data = read_bytes(shard)
            except StorageError as error:
                skips.count("shard_unreadable", str(error))
                continue
            shard_images = mmc4_image_folder(shard, image_prefix)  # a folder per shard, or flat
            for index, record in iter_records(shard, data, skips):
                try:
                    parse_mmc4(record, f"{shard}#{index}", shard_images)  # schema check
                    uris = [
                        image_uri(shard_images, info["image_name"]) for info in record["image_info"]
                    ]
                except SkipSample as skip:
                    skips.count(skip.reason, f"{shard}#{index}: {skip.detail}")
                    continue
                found = 0
                for info, result in zip(
                    record["image_info"], pool.map(_read_image, uris), strict=True
                ):
                    if isinstance(result, StorageError):
                        reason = "image_unavailable" if result.transient else "missing_image"
                        skips.count(reason, str(result))
                        continue
                    info["image_base64"] = base64.b64encode(result).decode("ascii")
                    found += 1
                if not found:
                    skips.count("doc_without_images", f"{shard}#{index}")
                    continue
                members.append((f"{num_docs:09d}.json", json.dumps(record).encode("utf-8")))
                num_docs += 1
                num_images += found
                if len(members) == docs_per_shard:
                    flush()
    if members:
        flush()
    return {
        "shards": shards_written,
        "docs": num_docs,
        "images": num_images,
        "skips": skips.as_dict(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--input", required=True, help="an MMC4 shard, or a folder / prefix of them"
    )
    parser.add_argument(
        "--images",
        required=True,
        help="folder / prefix holding <image_name> files, or a folder per docs shard "
        "(<shard stem>_images/, as mmc4's download_images.py writes them)",
    )
    parser.add_argument("--output", required=True, help="folder / prefix for the tars")
    parser.add_argument("--docs-per-shard", type=int, default=250)
    parser.add_argument("--read-threads", type=int, default=16, help="parallel image reads")
    args = parser.parse_args(argv)
    if args.docs_per_shard < 1 or args.read_threads < 1:
        parser.error("--docs-per-shard and --read-threads must be at least 1")
    try:
        found = input_shards(args.input)
    except StorageError as error:
        parser.error(f"--input {args.input}: {error}")
    if not found:
        parser.error(f"--input {args.input}: no MMC4 shards ({', '.join(MMC4_SHARD_SUFFIXES)})")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = convert_mmc4_to_wds(
        args.input,
        args.images,
        args.output,
        docs_per_shard=args.docs_per_shard,
        read_threads=args.read_threads,
    )
    print(json.dumps(summary, indent=2))
    if not summary["docs"]:
        parser.exit(1, "error: no document was converted (see the skips above)\n")
    return summary
