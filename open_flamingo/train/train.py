"""OpenFlamingo's own pre-training recipe: MMC4 (OpenFlamingo's webdataset form) + LAION
img2dataset tars, on the same machinery as train_omnicorpus.py (one loop, one set of flags;
upstream's names such as --batch_size_mmc4 / --train_num_samples_mmc4 /
--loss_multiplier_mmc4 are accepted).

    accelerate launch --config_file accelerate_configs/accelerate_config_ddp.yaml \\
        open_flamingo/train/train.py --mmc4_shards s3://.../mmc4 --laion_shards s3://.../laion ...
"""

import sys

from open_flamingo.train import train_omnicorpus


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(arg.startswith("--interleaved_dataset") for arg in argv):
        argv = ["--interleaved_dataset", "mmc4_wds", *argv]
    return train_omnicorpus.main(argv)


if __name__ == "__main__":
    sys.exit(main())
