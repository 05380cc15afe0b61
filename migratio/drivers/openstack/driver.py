"""OpenStack sites: Glance v2 through openstacksdk's image proxy.

The driver sends raw requests on the proxy (a keystoneauth adapter: auth, catalog,
timeouts) instead of using the SDK's ``Image`` resource, because the resource
silently drops unknown list filters, coerces ``hw_*`` values to other types, adds
``owner_specified.openstack.*`` properties, and returns failed uploads without
raising. Every status code is therefore checked here, in one place.
"""

from __future__ import annotations

import html
import http.client
import logging
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import openstack
import openstack.connection
import openstack.exceptions
import requests
import urllib3.exceptions
from keystoneauth1 import exceptions as ksa

from migratio.config import OpenStackSite
from migratio.drivers.base import (
    MIGRATION_ID,
    DestinationImage,
    Provenance,
    RecordSpec,
    Registration,
    SourceImage,
    Transfer,
)
from migratio.drivers.openstack import mapping
from migratio.drivers.openstack.mapping import IMAGE_ID
from migratio.errors import (
    ImageNotFound,
    MigratioError,
    MigrationError,
    NotFound,
    PermanentError,
    TransientError,
)
from migratio.text import error_text, one_line

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# Measured on the test bed, 1 GiB site-a -> site-b: 1, 2, 4 and 8 MiB chunks all
# stream as fast as `curl GET | curl -T PUT` (Glance's own hashing is the bound).
# 1 MiB uses the least client CPU and memory; 8 MiB about doubles the CPU
# (each chunk is copied once more when requests frames it for chunked upload).
READ_CHUNK = 1 * MiB
PAGE_SIZE = 100
JSON_PATCH = "application/openstack-images-v2.1-json-patch"


class OpenStackSiteDriver:
    """A Glance v2 site, as source and destination.

    site_id: the site's id, named in every error message.
    settings: ``cloud`` is the clouds.yaml entry (found the OpenStack way, e.g.
        ``OS_CLIENT_CONFIG_FILE``); ``timeout`` bounds each socket operation, not a
        whole transfer, so large images are fine.
    connection: an already open connection (tests, tools); by default one is opened
        on first use, so a driver for an unreachable site can still be built.
    """

    def __init__(
        self,
        site_id: str,
        settings: OpenStackSite,
        connection: openstack.connection.Connection | None = None,
    ) -> None:
        self.site_id = site_id
        self.settings = settings
        self._connection = connection
        self._lock = threading.Lock()

    # -- source ---------------------------------------------------------------

    def describe(self, image_id: str) -> SourceImage:
        """The image's metadata; its status is reported as is."""
        action = "describe image"
        try:
            image = self._json("GET", self._path(image_id), action)
        except NotFound:
            raise self._not_found(image_id) from None
        try:
            return mapping.source_image(image)
        except (KeyError, TypeError, ValueError) as exc:
            # Not what Glance answers: a site that does not answer properly (yet).
            problem = f"the answer is not an image ({type(exc).__name__}: {exc})"
            raise TransientError(self._message(action, problem)) from None

    @contextmanager
    def read(self, image_id: str, offset: int = 0) -> Iterator[Iterator[bytes]]:
        """Stream the image file from ``offset``; the response is closed when the
        context exits. A Glance that ignores the Range header sends everything, and
        the bytes before ``offset`` are skipped here."""
        action = f"download image {image_id}"
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = self._request(
                "GET", self._path(image_id, "file"), action, stream=True, headers=headers
            )
        except NotFound:
            raise self._not_found(image_id) from None
        try:
            if response.status_code == 204:
                raise PermanentError(self._message(action, "image has no data"))
            chunks = self._stream(response, action)
            if offset and response.status_code != 206:
                chunks = _skip(chunks, offset)
            yield chunks
        finally:
            response.close()

    # -- destination ----------------------------------------------------------

    @property
    def required_disk_format(self) -> str | None:
        return self.settings.required_disk_format

    @property
    def wants_file(self) -> bool:
        return False

    def find_copy(self, provenance: Provenance, disk_format: str) -> DestinationImage | None:
        """Filters on the server (Glance matches custom properties exactly)."""
        wanted = {
            **provenance.as_properties(),
            "disk_format": disk_format,
            "status": "active",
        }
        for image in self._list(wanted, "find an earlier copy"):
            # Re-checked here: a filter the server did not apply must not match.
            if all(image.get(key) == value for key, value in wanted.items()):
                return mapping.destination_image(image)
        return None

    def find_record(self, migration_id: str) -> DestinationImage | None:
        """Any status; with several, the one furthest along, then the newest."""
        images = [
            image
            for image in self._list({MIGRATION_ID: migration_id}, "find the migration's record")
            if image.get(MIGRATION_ID) == migration_id
        ]
        if not images:
            return None
        # Glance lists newest first and min() keeps the first of equals.
        best = min(images, key=mapping.progress_rank)
        return mapping.destination_image(best)

    def get_record(self, record_id: str) -> DestinationImage | None:
        try:
            return mapping.destination_image(self._json("GET", self._path(record_id), "get record"))
        except NotFound:
            return None

    def create_record(self, spec: RecordSpec) -> DestinationImage:
        body = {
            "name": spec.name,
            "disk_format": spec.disk_format,
            "container_format": spec.container_format,
            MIGRATION_ID: spec.migration_id,
        }
        return mapping.destination_image(self._json("POST", "/images", "create record", json=body))

    def receive(self, record_id: str, transfer: Transfer) -> str | None:
        """Chunked upload straight from the payload stream, never buffered whole.

        An exception raised by the stream itself (a safety guard, a shutdown)
        propagates unchanged, however the transport reports the aborted request.
        Glance cannot resume an upload: it always starts at offset 0.
        """
        action = f"upload to record {record_id}"
        body = _Body(transfer.chunks())
        try:
            response = self._request(
                "PUT",
                self._path(record_id, "file"),
                action,
                data=iter(body),
                headers={"Content-Type": "application/octet-stream"},
                # A re-authentication or redirect would resend a half-consumed iterator.
                allow_reauth=False,
                redirect=False,
            )
        except BaseException:
            if body.error is not None:
                raise body.error from None
            raise
        response.close()
        return None

    def register(self, record_id: str, registration: Registration) -> DestinationImage:
        """Patch the metadata; Glance cannot change formats once data is stored."""
        action = f"register record {record_id}"
        image = self._json("GET", self._path(record_id), action)
        for key in ("disk_format", "container_format"):
            if image.get(key) != getattr(registration, key):
                problem = f"{key} is {image.get(key)!r}, expected {getattr(registration, key)!r}"
                raise PermanentError(self._message(action, problem))
        patch = mapping.patch(image, registration)
        if patch:
            image = self._json(
                "PATCH",
                self._path(record_id),
                action,
                json=patch,
                headers={"Content-Type": JSON_PATCH},
            )
        return mapping.destination_image(image)

    def remove(self, record_id: str) -> None:
        with suppress(NotFound):
            self._request("DELETE", self._path(record_id), f"remove record {record_id}").close()

    def close(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    # -- transport ------------------------------------------------------------

    def _proxy(self) -> Any:
        """The image proxy; the connection is opened once, on first use."""
        with self._lock:
            if self._connection is None:
                log.debug("site %s: opening cloud %r", self.site_id, self.settings.cloud)
                self._connection = openstack.connect(
                    cloud=self.settings.cloud, api_timeout=self.settings.timeout
                )
            return self._connection.image

    def _request(self, method: str, path: str, action: str, **kwargs: Any) -> requests.Response:
        """One request; transport failures and error statuses become typed errors.

        keystoneauth's own retries are off (openstacksdk retries Glance 503s five
        times by default, ~15 s): migratio's retry policy is the one place that
        decides, and an upload must never be retried with a half-consumed iterator.
        """
        with translated(self.site_id, action):
            response: requests.Response = self._proxy().request(
                path, method, connect_retries=0, status_code_retries=0, **kwargs
            )
        if response.status_code >= 400:
            try:
                raise error_for_response(response, self.site_id, action)
            finally:
                response.close()
        return response

    def _json(self, method: str, path: str, action: str, **kwargs: Any) -> dict[str, Any]:
        """The JSON object a request answers (its body is already read: not streamed)."""
        response = self._request(method, path, action, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise PermanentError(self._message(action, "the answer is not a JSON object"))
        return body

    def _list(self, filters: Mapping[str, str], action: str) -> Iterator[dict[str, Any]]:
        """Every image matching the filters, page by page (``limit``/``marker``)."""
        params: dict[str, str | int] = {**filters, "limit": PAGE_SIZE}
        while True:
            page = self._json("GET", "/images", action, params=params)
            images = [image for image in page.get("images", []) if isinstance(image, dict)]
            yield from images
            if not images or "next" not in page:
                return
            params["marker"] = str(images[-1]["id"])

    def _stream(self, response: requests.Response, action: str) -> Iterator[bytes]:
        with translated(self.site_id, action):
            yield from response.iter_content(READ_CHUNK)

    def _path(self, image_id: str, *rest: str) -> str:
        """An image URL path. Glance ids are UUIDs; anything else cannot exist, and is
        never sent: Glance decodes ``%2F``, so a quoted ``ID/file`` would still download."""
        if not IMAGE_ID.fullmatch(image_id):
            raise NotFound(self._message(f"image {image_id!r}", "not a Glance id (a UUID)"))
        return "/".join(("/images", image_id, *rest))

    def _not_found(self, image_id: str) -> ImageNotFound:
        return ImageNotFound(f"site {self.site_id}: image {image_id} does not exist")

    def _message(self, action: str, problem: str) -> str:
        return one_line(f"site {self.site_id}: {action}: {problem}")


class _Body:
    """The caller's chunks, remembering an exception they raise so it can be re-raised."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._chunks:
                # An empty chunk would end a chunked body early.
                if chunk:
                    yield chunk
        except GeneratorExit:
            raise
        except BaseException as exc:
            self.error = exc
            raise


# -- error mapping ------------------------------------------------------------

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
        message = f"site {site_id}: {action}: {exc.message} (HTTP {exc.http_status})"
        raise kind(one_line(message)) from exc
    except RETRYABLE_ERRORS as exc:
        raise TransientError(one_line(f"site {site_id}: {action}: {error_text(exc)}")) from exc
    except (ksa.ClientException, openstack.exceptions.SDKException) as exc:
        # An auth plugin may wrap the connection error that made it fail.
        kind = TransientError if _caused_by_transport(exc) else PermanentError
        raise kind(one_line(f"site {site_id}: {action}: {error_text(exc)}")) from exc


def error_for_response(response: requests.Response, site_id: str, action: str) -> MigrationError:
    """The typed error for an HTTP error status from Glance."""
    status = response.status_code
    if status == 401:
        return PermanentError(_auth_failed(site_id, action))
    message = one_line(f"site {site_id}: {action}: HTTP {status}: {_explanation(response)}")
    return NotFound(message) if status == 404 else error_class(status)(message)


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


def _skip(chunks: Iterator[bytes], count: int) -> Iterator[bytes]:
    """Drop the first ``count`` bytes of a stream."""
    for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        yield chunk[count:]
        count = 0
