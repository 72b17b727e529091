"""Running a language model: devices, activations through hooks, batched generation."""
