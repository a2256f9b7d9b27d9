"""Typed settings: a YAML file, overridden by the environment, validated at start-up.

Every key can be overridden by an environment variable named `FEATURE_CONSUMER_<SECTION>__<KEY>`
(for example `FEATURE_CONSUMER_KAFKA__BOOTSTRAP_SERVERS`, `FEATURE_CONSUMER_CASSANDRA__PASSWORD`),
which is how deployments inject what is secret or specific to them. Values can also come from a
directory of files (`FEATURE_CONSUMER_SECRETS_DIR`), one file per variable name, as Kubernetes mounts a
Secret. Secrets are `SecretStr`: they are never printed, logged or shown by `check`.

The sections themselves, and the typed values they hand the parts of the daemon, are in sections.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    Field,
    ValidationError,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from consumer.config import sections
from consumer.core.errors import ConfigError
from consumer.core.redact import describe_validation_error
from consumer.core.views import FeatureView, check_views, parse_views

ENV_PREFIX = "FEATURE_CONSUMER_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True,
        nested_model_default_partial_update=True,
    )

    kafka: sections.KafkaSettings = Field(default_factory=sections.KafkaSettings)
    cassandra: sections.CassandraSettings = Field(default_factory=sections.CassandraSettings)
    schema_registry: sections.RegistrySettings | None = None
    batch: sections.BatchSettings = Field(default_factory=sections.BatchSettings)
    limits: sections.LimitsSettings = Field(default_factory=sections.LimitsSettings)
    run: sections.RunSettings = Field(default_factory=sections.RunSettings)
    metrics: sections.MetricsSettings = Field(default_factory=sections.MetricsSettings)
    feast_repo: str | None = None
    views: list[FeatureView] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file: deployments override what the file says.
        return env_settings, file_secret_settings, init_settings

    def with_views(self, views: list[FeatureView]) -> Settings:
        """These settings with their (already validated) views, checked against each other."""
        if not views:
            raise ConfigError("no feature views: give `views:` in the config file or --feast-repo")
        topics = {t for v in views for t in v.topics}
        if self.kafka.dead_letter_topic in topics:
            raise ConfigError(f"kafka.dead_letter_topic: {self.kafka.dead_letter_topic!r} is also a source topic")
        return self.model_copy(update={"views": list(views)})

    @property
    def topics(self) -> list[str]:
        return sorted({t for v in self.views for t in v.topics})


def secret_files(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Settings read from the files of the directory `FEATURE_CONSUMER_SECRETS_DIR`, each named like the
    variable it stands for, `FEATURE_CONSUMER_<SECTION>__<KEY>` (as Kubernetes mounts a Secret's keys). A
    trailing newline is dropped. They rank below the environment and above the config file."""
    found: dict[str, str] = {}
    directory = environ.get(f"{ENV_PREFIX}SECRETS_DIR")
    if directory:
        base = Path(directory)
        if not base.is_dir():
            raise ConfigError(f"{ENV_PREFIX}SECRETS_DIR={directory} is not a directory")
        for path in sorted(base.iterdir()):
            if path.is_file() and path.name.upper().startswith(ENV_PREFIX):
                found[path.name.upper()] = _read_secret(path)
    out: dict[str, dict[str, str]] = {}
    for name, value in found.items():
        if name in environ:
            continue  # the variable itself wins
        section, sep, key = name.removeprefix(ENV_PREFIX).partition("__")
        if not sep or not key:
            raise ConfigError(f"secret {name}: expected {ENV_PREFIX}<SECTION>__<KEY>")
        out.setdefault(section.lower(), {})[key.lower()] = value
    return out


def _read_secret(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").removesuffix("\n")
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None


def load_settings(path: str | Path | None, overrides: dict[str, Any] | None = None,
                  feast_repo: str | Path | None = None) -> Settings:
    """Read, merge and validate the configuration; ConfigError names the offending key.

    With a Feast repo (the argument, or `feast_repo:` in the file), its views are added to the file's,
    and its online store and Kafka settings become defaults that the file and the environment override.
    """
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        raw = loaded
        base = path.resolve().parent
    raw = {**raw, **(overrides or {})}
    views_raw = raw.pop("views", None) or []
    if not isinstance(views_raw, list):
        raise ConfigError("views: must be a list of feature views")
    views = parse_views(views_raw, base_dir=base)
    repo_path = feast_repo or raw.get("feast_repo")
    if repo_path:
        from consumer.feast.repo import load_feast_repo

        repo_path = Path(repo_path) if Path(repo_path).is_absolute() or feast_repo else base / repo_path
        repo = load_feast_repo(repo_path)
        raw["feast_repo"] = str(repo_path)
        for section, defaults in (("cassandra", repo.cassandra), ("kafka", repo.kafka)):
            given = raw.get(section) or {}
            if not isinstance(given, dict):
                raise ConfigError(f"{section}: must be a mapping")
            raw[section] = {**defaults, **given}
        views = [*repo.views, *views]
        check_views(views)
    for section, values in secret_files(os.environ).items():
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"{section}: must be a mapping")
        raw[section] = {**given, **values}
    try:
        settings = Settings(**raw)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err)) from None
    # Views are validated on their own (errors then name the view), and attached unvalidated again.
    return settings if not views and settings.feast_repo else settings.with_views(views)
