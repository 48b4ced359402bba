"""The embedded default (`make demo`, scripts/demo.py): train a small Flamingo on the CPU, then
caption held-out images. `run.main` runs the stages; `settings` holds the two configurations,
`inputs` prepares the LM, the vision encoder (`shapes_vision`) and the corpus, `launch` builds
the training and eval command lines, and `captions` captions and scores held-out images."""
