"""Earth Engine credentials: which key to use, checking it offline, initialising the client.

:func:`initialize_earth_engine` uses a service-account JSON key named by
``options.service_account_key`` or the ``SOFTCON_EE_KEY`` environment variable, otherwise the user
credentials stored by ``earthengine authenticate``. Neither the key's path nor its content is ever put
in a log line, an exception message, ``describe()`` or ``repr``: messages from the client library are
redacted (:func:`redact`) before they are shown.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import ee
import google.auth
import google.auth.exceptions

from pipeline.errors import BadInput
from pipeline.manifest import EarthEngineSourceOptions
from pipeline.sources.earthengine.transport import clip

log = logging.getLogger(__name__)

#: Environment variable naming a service-account JSON key file (used when the manifest names none).
KEY_ENV_VAR = "SOFTCON_EE_KEY"

#: What to do when Earth Engine cannot authenticate (ends every :class:`EarthEngineAuthError` message).
AUTH_HELP = (f"run `earthengine authenticate`, or set {KEY_ENV_VAR} (or source.earthengine.service_account_key) "
             "to a service-account JSON key file")


class EarthEngineAuthError(BadInput):
    """Earth Engine could not be initialised: a configuration problem (the CLI exits with code 2).

    The message says what to do and never holds the key's path or content.
    """


def key_path(options: EarthEngineSourceOptions) -> tuple[str | None, str]:
    """The service-account key file to use (None: the stored user credentials) and where it was named."""
    if options.service_account_key:
        return options.service_account_key, "source.earthengine.service_account_key"
    env = os.environ.get(KEY_ENV_VAR)
    if env:
        return env, f"the {KEY_ENV_VAR} environment variable"
    return None, "the stored user credentials"


def service_account_credentials(path: str, where: str) -> Any:
    try:
        return ee.ServiceAccountCredentials(None, key_file=path)
    except Exception as err:  # noqa: BLE001 - the original message may quote the key or its path
        raise EarthEngineAuthError(
            f"could not load the Earth Engine service-account key named by {where} ({type(err).__name__}); "
            f"check that it is a readable JSON key file, or {AUTH_HELP}") from None


def check_credentials(options: EarthEngineSourceOptions) -> None:
    """Raise :class:`EarthEngineAuthError` when no credentials can be found. Offline: a service-account key
    is loaded, stored user credentials are only looked up (Earth Engine checks them when the run starts).
    """
    path, where = key_path(options)
    if path:
        service_account_credentials(path, where)
        return
    try:
        if ee.oauth.get_credentials_arguments().get("refresh_token"):
            return  # what `earthengine authenticate` stores
    except (OSError, ValueError):
        pass  # no (readable) stored credentials: Earth Engine falls back to Google's default credentials
    try:
        google.auth.default()
    except google.auth.exceptions.DefaultCredentialsError:
        raise EarthEngineAuthError(f"no Earth Engine credentials found: {AUTH_HELP}") from None



def secret_strings(key_path: str) -> list[str]:
    """Strings that must never be shown: the path, the key file's text and its longer values."""
    secrets = [key_path, os.path.basename(key_path)]
    try:
        with open(key_path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError):
        return secrets
    secrets.append(text)
    try:
        content = json.loads(text)
    except ValueError:
        content = None
    if isinstance(content, dict):
        for value in content.values():
            if isinstance(value, str) and len(value) >= 8:
                secrets.append(value)
                secrets.extend(line for line in value.splitlines() if len(line) >= 8)
    secrets.extend(line.strip() for line in text.splitlines() if len(line.strip()) >= 8)
    return secrets


def redact(message: str, secrets: list[str]) -> str:
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        message = message.replace(secret, "<redacted>")
        escaped = json.dumps(secret)[1:-1]  # the same text as it appears inside JSON/repr output
        if escaped != secret:
            message = message.replace(escaped, "<redacted>")
    return clip(message)


def auth_kind(options: EarthEngineSourceOptions) -> str:
    """``"service_account"`` when a key file is named (manifest or environment), else ``"user"``."""
    return "service_account" if key_path(options)[0] else "user"


def initialize_earth_engine(options: EarthEngineSourceOptions, request_timeout_s: float | None) -> None:
    """Initialise the Earth Engine client of this process and turn its own HTTP retries off.

    Args:
        options: The source options (project, optional service-account key).
        request_timeout_s: Deadline of every Earth Engine request, or None to keep the client's default.

    Raises:
        EarthEngineAuthError: The key cannot be loaded or Earth Engine refuses the credentials; the
            message is free of the key's path and content.
    """
    path, where = key_path(options)
    kind = auth_kind(options)
    project = options.project
    secrets: list[str] = []
    credentials: Any = "persistent"
    if path:
        secrets = secret_strings(path)
        credentials = service_account_credentials(path, where)
        project = project or getattr(credentials, "project_id", None)
    try:
        ee.Initialize(credentials, project=project)
    except Exception as err:  # noqa: BLE001
        raise EarthEngineAuthError(
            f"Earth Engine initialisation failed ({kind} credentials from {where}, "
            f"project={project!r}): {type(err).__name__}: {redact(str(err), secrets)}; "
            f"{AUTH_HELP}") from None
    ee.data.setMaxRetries(0)  # retries are ours (pipeline.sources.earthengine.transport.call_with_retries)
    if request_timeout_s:
        ee.data.setDeadline(int(request_timeout_s * 1000))
    log.info("Earth Engine initialised (project=%s, auth=%s)", project, kind)
