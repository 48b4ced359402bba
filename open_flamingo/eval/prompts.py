"""OpenFlamingo's evaluation prompts, and how demonstrations are joined in front of a query.

A demonstration ends with `<|endofchunk|>`; the query prompt stops where the model continues.
"""

IMAGE = "<image>"
END_OF_CHUNK = "<|endofchunk|>"


def _completed(prefix: str, target: str | None) -> str:
    return prefix if target is None else f"{prefix}{target}{END_OF_CHUNK}"


def caption_prompt(caption: str | None = None) -> str:
    """`<image>Output:{caption}<|endofchunk|>`, or `<image>Output:` for the query."""
    return _completed(f"{IMAGE}Output:", caption)


def vqa_prompt(question: str, answer: str | None = None) -> str:
    """`<image>Question:{question} Short answer:{answer}<|endofchunk|>`."""
    return _completed(f"{IMAGE}Question:{question} Short answer:", answer)


def imagenet_prompt(label: str | None = None) -> str:
    """`<image>Output:{class name}<|endofchunk|>` (the class name is scored, not generated)."""
    return _completed(f"{IMAGE}Output:", label)


def hateful_memes_prompt(text: str, label: str | None = None) -> str:
    """`<image>is an image with: '{text}' written on it. Is it hateful? Answer:{yes|no}`."""
    return _completed(
        f"{IMAGE}is an image with: '{text}' written on it. Is it hateful? Answer:", label
    )


def with_demonstrations(
    demonstrations: list[str], query: str, num_shots: int, separator: str = ""
) -> str:
    """Demonstration prompts (each followed by `separator`) then the query prompt.

    At 0 shots OpenFlamingo still shows 2 demonstrations, as text only: their `<image>` tokens
    are removed (and their images are not passed), so only the query has an image.
    """
    context = "".join(prompt + separator for prompt in demonstrations)
    if num_shots == 0:
        context = context.replace(IMAGE, "")
    return context + query
