"""The toolkit's version: one place, read by the package metadata, ``distil --version``, run
summaries and the plugin host's check of each plugin's ``distil-toolkit`` requirement."""

__version__ = "0.1.0"
