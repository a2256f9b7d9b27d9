"""feature-consumer: Kafka feature topics -> Feast's Cassandra online store, newest value wins."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("feature-consumer")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
