"""Supervised fine-tuning on a frozen mix: TRL runs (LoRA or full), progress, cancel, resume."""
