"""Trainer stage: CLIP dual encoder, data, losses, fitting, evaluation."""
