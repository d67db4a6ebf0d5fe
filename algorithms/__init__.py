"""One file per algorithm; each runs on its own as `python algorithms/<name>.py`."""
