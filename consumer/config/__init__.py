"""Configuration: read at the edge (the CLI and app), handed to the parts as small typed values."""

from consumer.config.sections import (
    BatchSettings,
    CassandraSettings,
    KafkaSettings,
    LimitsSettings,
    MetricsSettings,
    RegistrySettings,
    RunSettings,
)
from consumer.config.settings import Settings, load_settings, secret_files

__all__ = ["BatchSettings", "CassandraSettings", "KafkaSettings", "LimitsSettings", "MetricsSettings",
           "RegistrySettings", "RunSettings", "Settings", "load_settings", "secret_files"]
