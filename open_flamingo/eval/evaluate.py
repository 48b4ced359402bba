"""Few-shot evaluation of an OpenFlamingo model, as OpenFlamingo evaluates it.

    python -m open_flamingo.eval.evaluate --vision_encoder_path ViT-L-14 \\
        --lm_path anas-awadalla/mpt-1b-redpajama-200b --checkpoint_path checkpoint.pt \\
        --eval_coco --coco_train_image_dir_path ... --shots 0 4 --num_trials 3 \\
        --trial_seeds 42 43 44 --results_file results.json

Under torchrun / `accelerate launch` the test queries are split over the processes (whole
batches) and scored on rank 0; the scores equal a single process's. Every path the flags name is
checked before anything loads (args.py); the work is tasks.py's. This file imports nothing of
the eval extra until it has checked it is installed.
"""

import os
import sys

if __package__ in (None, ""):  # run as `python open_flamingo/eval/evaluate.py`
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(os.path.dirname(_here)))

from open_flamingo.cli import configure_logging  # noqa: E402 (after a script run's path)
from open_flamingo.extras import require  # noqa: E402


def main(argv=None) -> dict | None:
    """Run the evaluation; returns the results on rank 0 (None on other ranks)."""
    require("eval", "open_flamingo.eval.evaluate")
    import torch

    from open_flamingo.eval.args import parse_args
    from open_flamingo.eval.distributed import init_world
    from open_flamingo.eval.tasks import run

    args = parse_args(argv)
    configure_logging()
    world = init_world(args.dist_url, args.dist_backend, not args.no_set_device_rank)
    # scoped, not torch.set_grad_enabled(False): a caller in the same process (a notebook, the
    # tests) keeps autograd afterwards
    with torch.no_grad():
        return run(args, world)


if __name__ == "__main__":
    main()
