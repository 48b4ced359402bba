"""Convert MMC4 `jsonl.zip` shards and their image files into OpenFlamingo's MMC4 webdataset form.

Usage and code: open_flamingo/tools/convert_mmc4_to_wds.py.
"""

from open_flamingo.tools.convert_mmc4_to_wds import main

if __name__ == "__main__":
    main()
