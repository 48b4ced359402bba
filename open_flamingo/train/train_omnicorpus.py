"""OmniCorpus-style OpenFlamingo pre-training: interleaved documents + LAION pairs.

    accelerate launch --config_file accelerate_configs/accelerate_config_zero1_slurm.yaml \\
        open_flamingo/train/train_omnicorpus.py --lm_path ... --omnicorpus_shards s3://... ...

Every flag is honoured or rejected (open_flamingo/train/args.py), and every path and count the
flags name is checked before the model loads (preflight.py); the flags become a TrainConfig
(config.py), which is what the rest reads. `main(argv)` can be called from a test with a list of
flags. This file imports nothing of the training extra until it has checked it is installed.
"""

import sys

from open_flamingo.extras import require


def main(argv=None) -> int:
    require("training", "train_omnicorpus.py")
    from open_flamingo.train.run import run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
