"""Data: datasets, chat files, the generated code and helpful datasets, question sets, labelled panels."""
