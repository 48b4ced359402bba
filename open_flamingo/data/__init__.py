"""Training data: storage (local / S3), corpus formats, sample building, resumable loading."""
