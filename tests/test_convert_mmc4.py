"""scripts/convert_mmc4_to_wds.py (open_flamingo/tools/convert_mmc4_to_wds.py) on a tiny MMC4
sample built here: jsonl.zip shards + image files -> OpenFlamingo-style webdataset tars that
parse_mmc4_wds reads back."""

import base64
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from open_flamingo.data.documents import ImageRef, parse_mmc4, parse_mmc4_wds
from open_flamingo.data.mmc4 import MMC4_MIN_IMAGE_BYTES
from open_flamingo.data.shards import iter_records
from open_flamingo.data.skips import SkipCounter
from open_flamingo.tools import convert_mmc4_to_wds


def noise_jpeg(seed: int) -> bytes:
    """A JPEG over MMC4's 10 KB limit (noise does not compress)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    assert len(buffer.getvalue()) > MMC4_MIN_IMAGE_BYTES
    return buffer.getvalue()


def mmc4_doc(names: list[str], sims: list[list[float]]) -> dict:
    return {
        "url": "https://example.com/a",
        "text_list": ["First.", "Second.", "Third."],
        "image_info": [{"image_name": n, "raw_url": f"https://x/{n}"} for n in names],
        "similarity_matrix": sims,
    }


def write_zip(path: Path, member: str, lines: list[bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, b"\n".join(lines) + b"\n")


def test_convert_mmc4_to_wds(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    files = {"a.jpg": noise_jpeg(0), "b.jpg": noise_jpeg(1), "c.jpg": noise_jpeg(2)}
    for name, data in files.items():
        (images / name).write_bytes(data)
    shards = tmp_path / "mmc4"
    shards.mkdir()
    doc0 = mmc4_doc(["a.jpg", "gone.jpg"], [[0.1, 0.9, 0.2], [0.5, 0.3, 0.3]])
    doc1 = mmc4_doc(["gone.jpg"], [[0.9, 0.1, 0.1]])  # no image can be read
    doc2 = mmc4_doc(["a.jpg"], [[0.9, 0.1]])  # similarity matrix of the wrong shape
    doc3 = mmc4_doc(["b.jpg", "c.jpg"], [[0.3, 0.2, 0.8], [0.7, 0.1, 0.1]])
    write_zip(
        shards / "docs_shard_0_v2.jsonl.zip",
        "docs_shard_0_v2.jsonl",
        [json.dumps(d).encode() for d in (doc0, doc1, doc2)],
    )
    write_zip(
        shards / "docs_shard_1_v2.jsonl.zip",
        "docs_shard_1_v2.jsonl",
        [b'{"text_list": [', json.dumps(doc3).encode()],
    )
    (shards / "README.txt").write_text("not a shard")

    summary = convert_mmc4_to_wds.main(
        ["--input", str(shards), "--images", str(images), "--output", str(tmp_path / "wds")]
        + ["--docs-per-shard", "1"]
    )
    assert json.loads(capsys.readouterr().out) == summary
    assert [Path(s).name for s in summary["shards"]] == ["000000.tar", "000001.tar"]
    assert (summary["docs"], summary["images"]) == (2, 3)
    assert summary["skips"] == {
        "missing_image": 2,
        "doc_without_images": 1,
        "schema": 1,
        "invalid_json": 1,
    }

    samples, skips = [], SkipCounter()
    for shard in summary["shards"]:
        samples += [record for _, record in iter_records(shard, Path(shard).read_bytes(), skips)]
    assert skips.as_dict() == {}
    assert [sample["__key__"] for sample in samples] == ["000000000", "000000001"]
    first = json.loads(samples[0]["json"])
    assert base64.b64decode(first["image_info"][0]["image_base64"]) == files["a.jpg"]
    assert "image_base64" not in first["image_info"][1]  # gone.jpg: left for the loader to skip

    # doc0: only a.jpg is usable; it takes sentence 1 (0.9).
    skips = SkipCounter()
    doc = parse_mmc4_wds(samples[0], "k", 0.24, skips=skips)
    assert doc.texts == ["First.", None, "Second.", "Third."]
    assert doc.images == [None, ImageRef(data=files["a.jpg"]), None, None]
    assert skips.as_dict() == {"missing_image": 1}
    # doc3 read back inline matches doc3 read from the image folder.
    inline = parse_mmc4_wds(samples[1], "k", 0.24)
    from_files, _ = parse_mmc4(doc3, "k", images, 0.24).match()
    assert inline.texts == from_files.texts == [None, "First.", "Second.", None, "Third."]
    assert [Path(r.uri).read_bytes() if r else None for r in from_files.images] == [
        r.data if r else None for r in inline.images
    ]
    assert inline.images[0].data == files["c.jpg"] and inline.images[3].data == files["b.jpg"]


def test_an_input_without_shards_or_convertible_documents_fails(tmp_path, capsys):
    flags = ["--images", str(tmp_path), "--output", str(tmp_path / "wds")]
    with pytest.raises(SystemExit) as exit_info:
        convert_mmc4_to_wds.main(["--input", str(tmp_path / "typo"), *flags])
    assert exit_info.value.code == 2
    assert f"--input {tmp_path / 'typo'}: no MMC4 shards" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a shard file that is not there
        convert_mmc4_to_wds.main(["--input", str(tmp_path / "docs.jsonl.zip"), *flags])
    assert exit_info.value.code == 1
    output = capsys.readouterr()
    assert json.loads(output.out)["skips"] == {"shard_unreadable": 1}
    assert "no document was converted" in output.err
