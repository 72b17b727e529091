"""Models of a project: the manager, the Hugging Face hub, local model files, loading, memory estimates."""
