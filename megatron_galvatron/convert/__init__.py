"""Checkpoint conversion: Hugging Face GPT-2 / LLaMA folders <-> ours, and plan changes."""
