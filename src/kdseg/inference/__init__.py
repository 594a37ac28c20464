"""Inference: MONAI sliding window over whole cases, predictions restored to original geometry."""
