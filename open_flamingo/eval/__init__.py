"""Few-shot evaluation: captioning (CIDEr), VQA accuracy, ImageNet and Hateful Memes, as
OpenFlamingo computes them. `python -m open_flamingo.eval.evaluate --help` for the CLI."""
