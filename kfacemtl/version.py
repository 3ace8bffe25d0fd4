"""The package version (read by setup.cfg without importing the package).

Example:
    >>> __version__.count(".")
    2
"""
__version__ = "0.2.0"
