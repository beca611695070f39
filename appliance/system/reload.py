"""Reloading the configuration on SIGHUP (``systemctl reload appliance``).

The unit reads ``/etc/appliance/appliance.env`` with ``EnvironmentFile=``, so at start its
values are in the process environment, where they would outrank the file forever after: a
reload would never see an edit. :class:`Reloader` therefore does what systemd does on a
restart: every variable whose value in the environment is the one an env file gave at the
last (re)load is taken from that file again (or dropped, when the file no longer sets it).
Variables set otherwise (``Environment=``, a shell) keep winning, as at start.

A valid new configuration is returned with the variables that changed, for the appliance to
apply (LED and volume at once, the rest at the next conversation). An invalid one is logged
with the variable named, and the running configuration stays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dotenv import dotenv_values
from pydantic import BaseModel, SecretStr

from appliance.config import (
    SYSTEM_ENV_FILE,
    Settings,
    env_files_for,
    load_settings,
    secret_values_in_sources,
)
from appliance.errors import ConfigError
from appliance.system.journal import SecretFilter

log = logging.getLogger(__name__)


class _Notifies(Protocol):
    def reloading(self) -> None: ...
    def ready(self, status: str | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class Change:
    group: str  # the Settings group, e.g. "audio"
    field: str  # the field in the group, e.g. "volume"
    variable: str  # the env variable, e.g. "APPLIANCE_VOLUME"
    secret: bool

    def __str__(self) -> str:
        return self.variable


@dataclass(frozen=True, slots=True)
class Reloaded:
    """A valid configuration read on reload, and what differs from the running one."""

    settings: Settings
    changes: tuple[Change, ...]

    @property
    def changed(self) -> tuple[str, ...]:
        """The env variables whose values changed."""
        return tuple(change.variable for change in self.changes)

    def touches(self, group: str, *fields: str) -> bool:
        """Whether a change is in ``group`` (and among ``fields``, when given)."""
        return any(
            change.group == group and (not fields or change.field in fields)
            for change in self.changes
        )


def changes_between(old: Settings, new: Settings) -> tuple[Change, ...]:
    changes: list[Change] = []
    for group_name in type(old).model_fields:
        before, after = getattr(old, group_name), getattr(new, group_name)
        if not isinstance(before, BaseModel) or not isinstance(after, BaseModel):
            continue  # env_files: where the settings came from, not a setting
        for field_name, info in type(before).model_fields.items():
            old_value, new_value = getattr(before, field_name), getattr(after, field_name)
            if _plain(old_value) == _plain(new_value):
                continue
            extra = info.json_schema_extra
            assert isinstance(extra, dict)
            names = extra["env"]
            assert isinstance(names, list)
            changes.append(Change(group_name, field_name, str(names[0]), bool(extra["secret"])))
    return tuple(changes)


def _plain(value: object) -> object:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


class Reloader:
    """Re-reads the env files on request, keeping the running settings if the new ones fail.

    ``env_file`` is the ``--env-file`` of the run (None: only the system file). The process
    environment is updated in place as described above. Secrets of the new files are
    registered with the logging's secret filters before anything could print them.
    """

    def __init__(
        self,
        env_file: Path | None = None,
        *,
        notifier: _Notifies | None = None,
        system_env_file: Path = SYSTEM_ENV_FILE,
    ) -> None:
        self._env_file = env_file
        self._system_env_file = system_env_file
        self._notifier = notifier
        self._environ: MutableMapping[str, str] = os.environ
        self._from_files = self._read_files()

    def reload(self, current: Settings) -> Reloaded | None:
        """Read the configuration again; None (after logging why) if it cannot be used.

        Sends ``RELOADING=1`` first and ``READY=1`` after, whatever the outcome.
        """
        if self._notifier is not None:
            self._notifier.reloading()
        try:
            return self._reload(current)
        finally:
            if self._notifier is not None:
                self._notifier.ready()

    def _reload(self, current: Settings) -> Reloaded | None:
        previous_environment = dict(self._environ)
        previous_files = self._from_files
        files = self._read_files()
        self._refresh_environment(previous_files, files)
        _mask(secret_values_in_sources(self._env_file, system_env_file=self._system_env_file))
        try:
            settings = load_settings(self._env_file, system_env_file=self._system_env_file)
        except ConfigError as exc:
            # Put the environment back, so the next reload compares against what runs.
            self._environ.clear()
            self._environ.update(previous_environment)
            log.error("reload refused, the running configuration stays: %s", exc)
            return None
        self._from_files = files
        _mask(settings.secrets())
        result = Reloaded(settings, changes_between(current, settings))
        if result.changes:
            log.info("configuration reloaded; changed: %s", ", ".join(result.changed))
        else:
            log.info("configuration reloaded; nothing changed")
        return result

    def _read_files(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for path in env_files_for(self._env_file, self._system_env_file):
            if path.is_file():
                values.update(_values(path))
        return values

    def _refresh_environment(self, before: Mapping[str, str], after: Mapping[str, str]) -> None:
        for name, value in before.items():
            if self._environ.get(name) != value:
                continue  # set by someone else than the file: it keeps winning
            if name in after:
                self._environ[name] = after[name]
            else:
                del self._environ[name]


def _values(path: Path) -> dict[str, str]:
    try:
        return {k: v for k, v in dotenv_values(path).items() if v is not None}
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return {}


def _mask(secrets: list[str]) -> None:
    """Register secrets with every secret filter that logging set up (see setup_logging)."""
    for handler in logging.getLogger().handlers:
        for candidate in handler.filters:
            if isinstance(candidate, SecretFilter):
                candidate.add(*secrets)
