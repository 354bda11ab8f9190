"""Ray Train jobs: pretraining fmtrade's own foundation models and LoRA fine-tuning per symbol."""
