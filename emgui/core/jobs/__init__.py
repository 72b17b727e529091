"""Jobs: the runner and its context, the registry of kinds, the built-in kinds and their declared parameters."""
