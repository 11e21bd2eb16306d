"""tailhook: tails WAF detection logs and delivers them to webhooks, at least once."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tailhook")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
