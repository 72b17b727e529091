"""Fine-tuning and re-alignment."""
