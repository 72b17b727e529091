"""Qt side of emgui: windows, pages, plots, and the bridge that runs core jobs in worker threads."""
