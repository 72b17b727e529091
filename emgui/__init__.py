"""emgui: a desktop investigator for emergent misalignment in language models."""

__version__ = "0.1.0"
