"""Glance failures as migratio's typed errors: retry what can pass, fail what cannot.

Failures reach the driver three ways: as exceptions from keystoneauth and
openstacksdk (auth, catalog, version discovery), as exceptions from the
transport (requests, urllib3, sockets), and as HTTP error statuses the raw
requests answer. They are classified here, in one place, into one-line
``TransientError``/``PermanentError``/``NotFound`` messages that name the site
and the action, never credentials.
"""

from __future__ import annotations

import html
import http.client
import re
from collections.abc import Iterator
from contextlib import contextmanager

import openstack.exceptions
import requests
import urllib3.exceptions
from keystoneauth1 import exceptions as ksa

from migratio.errors import MigratioError, MigrationError, NotFound, PermanentError, TransientError
from migratio.text import error_text, one_line

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    ksa.ConnectionError,
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)
# Version discovery of an unreachable endpoint fails without naming the cause
# (keystoneauth's DiscoveryFailure, or the SDK's ServiceDiscoveryException when an
# endpoint override is set). Retrying them means a misconfigured URL fails only
# once the retry policy gives up, while a short outage does not fail a migration.
# A Glance that is restarting can answer version discovery half-ready, and
# openstacksdk then raises NotSupported ("exists but does not have any supported
# versions"), seen in 20-60 s outages: a site that does not answer properly yet.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    *TRANSPORT_ERRORS,
    ksa.DiscoveryFailure,
    openstack.exceptions.ServiceDiscoveryException,
    openstack.exceptions.NotSupported,
)

UNANSWERED_DISCOVERY = (
    "the image service did not answer its version discovery (down, restarting or "
    "unreachable at the catalog's endpoint)"
)


def message(site_id: str, action: str, problem: str) -> str:
    """The one-line text of every error about a site: ``site S: action: problem``."""
    return one_line(f"site {site_id}: {action}: {problem}")


@contextmanager
def translated(site_id: str, action: str) -> Iterator[None]:
    """Turn transport, auth and configuration failures into typed, one-line errors."""
    try:
        yield
    except MigratioError:
        raise
    except ksa.http.Unauthorized as exc:
        raise PermanentError(_auth_failed(site_id, action)) from exc
    except ksa.http.HttpError as exc:
        kind = error_class(exc.http_status)
        raise kind(message(site_id, action, f"{exc.message} (HTTP {exc.http_status})")) from exc
    except openstack.exceptions.NotSupported as exc:
        # The SDK's own words ("exists but does not have any supported versions")
        # hide that the service did not answer; say what an operator should check.
        raise TransientError(message(site_id, action, UNANSWERED_DISCOVERY)) from exc
    except RETRYABLE_ERRORS as exc:
        raise TransientError(message(site_id, action, error_text(exc))) from exc
    except (ksa.ClientException, openstack.exceptions.SDKException) as exc:
        # An auth plugin may wrap the connection error that made it fail.
        kind = TransientError if _caused_by_transport(exc) else PermanentError
        raise kind(message(site_id, action, error_text(exc))) from exc


def error_for_response(response: requests.Response, site_id: str, action: str) -> MigrationError:
    """The typed error for an HTTP error status from Glance."""
    status = response.status_code
    if status == 401:
        return PermanentError(_auth_failed(site_id, action))
    text = message(site_id, action, f"HTTP {status}: {_explanation(response)}")
    return NotFound(text) if status == 404 else error_class(status)(text)


def error_class(status: int) -> type[MigrationError]:
    """5xx, 408 and 429 are worth retrying; any other 4xx is not."""
    if status >= 500 or status in (408, 429):
        return TransientError
    return PermanentError


def _auth_failed(site_id: str, action: str) -> str:
    return (
        f"site {site_id}: {action}: authentication failed (HTTP 401) - "
        "check the credentials of the site's clouds.yaml entry"
    )


def _explanation(response: requests.Response) -> str:
    """Glance's reason: the text of its HTML error page (or JSON), first 4 KiB only."""
    try:
        head = next(response.iter_content(4096), b"")
    except TRANSPORT_ERRORS:  # the body is only a hint; never mask the status
        head = b""
    text = head.decode("utf-8", errors="replace")
    text = re.sub(r"<title>.*?</title>|<h1>.*?</h1>", " ", text, flags=re.S)
    text = html.unescape(re.sub(r"<[^>]+>", " ", text)).strip()
    return one_line(text or response.reason or "", 200)


def _caused_by_transport(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TRANSPORT_ERRORS):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
