"""megatron_galvatron: GPT training where every transformer layer runs under its own parallel strategy."""
