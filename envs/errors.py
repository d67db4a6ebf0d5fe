"""The error that bad input raises, everywhere in this collection."""


class ConfigError(ValueError):
    """A setting that cannot run (an unknown env id, sizes that do not divide, a flag out of range), found before
    anything is compiled. The command line prints it as one line that says what to change (runner.cli); any other
    exception is a bug and keeps its traceback. A ValueError, so code that catches ValueError still does."""
