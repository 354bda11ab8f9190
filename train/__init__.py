"""Ray Train jobs: pretraining fmtrade's finance-native base models and LoRA
fine-tuning of registered foundation models per symbol or pooled."""
