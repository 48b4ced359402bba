"""LAION pairs as published: an img2dataset output folder (tars of `<9-digit key>.jpg/.txt/.json`
beside per-shard `.parquet` and `_stats.json` sidecars) and OmniCorpus's LAION-En2B rows
(`{"image": <object name>, "caption": ...}` in `0000000.txt`, ... under an image prefix)."""

import json
from pathlib import Path

from published_corpora import EOC, IMAGE, Layout, jsonl, noise_jpeg, tar_of, write, write_parquet

LONG_CAPTION = "A very long caption that goes on " * 8


def pair_text(caption: str, eos: str) -> str:
    return f"{IMAGE}{caption.strip()}{EOC}{eos}"


def img2dataset_sidecars(folder: Path, shard: int, rows: list[dict]) -> None:
    """The `.parquet` (every attempted row, failures too) and `_stats.json` img2dataset writes
    beside each tar."""
    write_parquet(folder / f"{shard:05d}.parquet", rows)
    successes = sum(row["status"] == "success" for row in rows)
    stats = {
        "count": len(rows),
        "successes": successes,
        "failed_to_download": len(rows) - successes,
        "status_dict": {"success": successes, "failed_to_download": len(rows) - successes},
    }
    write(folder / f"{shard:05d}_stats.json", json.dumps(stats).encode())


def build_img2dataset(root: Path, eos: str) -> Layout:
    layout = Layout("laion", "laion_i2d", None)
    folder = root / "laion_i2d"
    samples = {
        0: [
            ("000000000", "Ein Hund im Schnee 🐕", "success"),
            ("000000001", "never downloaded", "failed_to_download"),
            ("000000002", "  A cat on a mat.  \n", "success"),
            ("000000003", None, "success"),  # a tar sample without its .txt: counted
        ],
        1: [("000010000", LONG_CAPTION, "success"), ("000010001", "Dos gatos.", "success")],
    }
    for shard, rows in samples.items():
        members, index = [], 0
        for seed, (key, caption, status) in enumerate(rows):
            url = f"https://example.org/laion/{key}.jpg"
            if status != "success":
                continue
            jpeg = noise_jpeg(5000 + 100 * shard + seed)
            meta = {"url": url, "caption": caption, "key": key, "status": status, "width": 64}
            members += [(f"{key}.jpg", jpeg), (f"{key}.json", json.dumps(meta).encode())]
            tar_key = f"laion_i2d/{shard:05d}.tar#{index}"
            if caption is None:
                layout.doc_skips[tar_key] = {"schema": 1}
            else:
                members.append((f"{key}.txt", caption.encode()))
                layout.expected[tar_key] = (pair_text(caption, eos), [jpeg])
                if caption == LONG_CAPTION:
                    layout.doc_skips[tar_key] = {"text_truncated": 1}
            index += 1
        write(folder / f"{shard:05d}.tar", tar_of(members))
        sidecar = [
            {
                "url": f"https://example.org/laion/{key}.jpg",
                "caption": caption,
                "key": key,
                "status": status,
                "error_message": None if status == "success" else "HTTP 404",
                "width": 64 if status == "success" else None,
            }
            for key, caption, status in rows
        ]
        img2dataset_sidecars(folder, shard, sidecar)
    return layout


def build_sidecars_only(root: Path) -> Path:
    """An img2dataset folder whose tars are missing: only the sidecar files."""
    folder = root / "laion_sidecars_only"
    rows = [{"url": "https://x.org/a.jpg", "caption": "a", "key": "000000000", "status": "success"}]
    img2dataset_sidecars(folder, 0, rows)
    return folder


def build_laionen2b(root: Path, eos: str) -> Layout:
    layout = Layout("laion_table", "laionen2b", "laionen2b_images")
    files = {
        "0000000.txt": [
            ("part-00000/000000000.jpg", "A lighthouse 灯塔 at dawn", True),
            ("part-00000/000000001.jpg", None, True),  # null caption
            ("part-00000/000000002.jpg", "Its image is missing.", False),
            ("part-00000/000000003.jpg", LONG_CAPTION, True),
        ],
        "0000001.txt": [
            ("part-00001/000010000.jpg", "Zwei Hunde.", True),
            ("part-00001/000010001.jpg", "  spaced out  ", True),
            ("part-00001/000010002.jpg", "cut off", True),
        ],
    }
    for file_number, (name, rows) in enumerate(files.items()):
        records = []
        for index, (image, caption, stored) in enumerate(rows):
            records.append({"image": image, "caption": caption, "similarity": 0.31, "width": 64})
            jpeg = noise_jpeg(7000 + 100 * file_number + index)
            if stored:
                write(root / "laionen2b_images" / image, jpeg)
            key = f"laionen2b/{name}#{index}"
            if caption is None:
                layout.doc_skips[key] = {"schema": 1}
            elif not stored:
                layout.doc_skips[key] = {"missing_image": 1, "no_images": 1}
            elif caption != "cut off":
                layout.expected[key] = (pair_text(caption, eos), [jpeg])
                if caption == LONG_CAPTION:
                    layout.doc_skips[key] = {"text_truncated": 1}
        cut = name == "0000001.txt"
        write(root / "laionen2b" / name, jsonl(records, cut_last=cut))
        if cut:
            layout.shard_skips[f"laionen2b/{name}"] = {"truncated_shard": 1}
    return layout
