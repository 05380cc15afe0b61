"""Glance v2 of one site: raw requests on openstacksdk's image proxy.

The driver sends raw requests on the proxy (a keystoneauth adapter: auth, catalog,
timeouts) instead of using the SDK's ``Image`` resource, because the resource
silently drops unknown list filters, coerces ``hw_*`` values to other types, adds
``owner_specified.openstack.*`` properties, and returns failed uploads without
raising. Every status code is therefore checked here, in one place.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import openstack
import openstack.connection
import requests

from migratio.config import OpenStackSite
from migratio.drivers.openstack.errors import error_for_response, message, translated
from migratio.drivers.openstack.mapping import IMAGE_ID
from migratio.errors import NotFound, PermanentError, TransientError
from migratio.live_sockets import LiveSockets, track_pools

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# Measured on the test bed, 1 GiB site-a -> site-b: 1, 2, 4 and 8 MiB chunks all
# stream as fast as `curl GET | curl -T PUT` (Glance's own hashing is the bound).
# 1 MiB uses the least client CPU and memory; 8 MiB about doubles the CPU
# (each chunk is copied once more when requests frames it for chunked upload).
READ_CHUNK = 1 * MiB
PAGE_SIZE = 100
JSON_PATCH = "application/openstack-images-v2.1-json-patch"


class GlanceApi:
    """The Image API of one site; every request made by the driver goes through here.

    site_id: named in every error message.
    settings: ``cloud`` is the clouds.yaml entry; ``connect_timeout`` and
        ``read_timeout`` bound each connect and each socket read or write (of
        Keystone's and Glance's requests alike), not a whole transfer.
    connection: an already open connection; by default one is opened on first use.

    Every socket it opens is tracked, so ``abort`` can cut them from another thread.
    """

    def __init__(
        self,
        site_id: str,
        settings: OpenStackSite,
        connection: openstack.connection.Connection | None = None,
    ) -> None:
        self.site_id = site_id
        self.settings = settings
        self._lock = threading.Lock()
        self.sockets = LiveSockets()
        self._connection = self._prepared(connection) if connection is not None else None

    def request(self, method: str, path: str, action: str, **kwargs: Any) -> requests.Response:
        """One request; transport failures and error statuses become typed errors.

        keystoneauth's own retries are off (openstacksdk retries Glance 503s five
        times by default, ~15 s): migratio's retry policy is the one place that
        decides, and an upload must never be retried with a half-consumed iterator.
        """
        with translated(self.site_id, action):
            response: requests.Response = self._proxy().request(
                path,
                method,
                connect_retries=0,
                status_code_retries=0,
                timeout=self._timeouts,
                **kwargs,
            )
        if response.status_code >= 400:
            try:
                if response.status_code == 401 and kwargs.get("allow_reauth") is False:
                    raise self._token_refused(action)
                raise error_for_response(response, self.site_id, action)
            finally:
                response.close()
        return response

    def json(self, method: str, path: str, action: str, **kwargs: Any) -> dict[str, Any]:
        """The JSON object a request answers (its body is already read: not streamed)."""
        response = self.request(method, path, action, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise PermanentError(self.message(action, "the answer is not a JSON object"))
        return body

    def images(self, filters: Mapping[str, str], action: str) -> Iterator[dict[str, Any]]:
        """Every image matching the filters, page by page (``limit``/``marker``)."""
        params: dict[str, str | int] = {**filters, "limit": PAGE_SIZE}
        while True:
            page = self.json("GET", "/images", action, params=params)
            images = [image for image in page.get("images", []) if isinstance(image, dict)]
            yield from images
            if not images or "next" not in page:
                return
            params["marker"] = str(images[-1]["id"])

    def stream(self, response: requests.Response, action: str) -> Iterator[bytes]:
        """A streamed response's body, in chunks of at most ``READ_CHUNK`` bytes."""
        with translated(self.site_id, action):
            yield from response.iter_content(READ_CHUNK)

    def upload(self, path: str, chunks: Iterable[bytes], action: str) -> None:
        """Chunked upload straight from ``chunks``, never buffered whole.

        An exception raised by ``chunks`` itself (a safety guard, a shutdown)
        propagates unchanged, however the transport reports the aborted request.
        """
        body = _Body(chunks)
        try:
            response = self.request(
                "PUT",
                path,
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

    def path(self, image_id: str, *rest: str) -> str:
        """An image URL path. Glance ids are UUIDs; anything else cannot exist, and is
        never sent: Glance decodes ``%2F``, so a quoted ``ID/file`` would still download."""
        if not IMAGE_ID.fullmatch(image_id):
            raise NotFound(self.message(f"image {image_id!r}", "not a Glance id (a UUID)"))
        return "/".join(("/images", image_id, *rest))

    def message(self, action: str, problem: str) -> str:
        return message(self.site_id, action, problem)

    def close(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def abort(self) -> None:
        """Cut every open connection (any thread; never blocks)."""
        cut = self.sockets.cut()
        log.debug("site %s: cut %d connections", self.site_id, cut)

    def _token_refused(self, action: str) -> TransientError:
        """A 401 to a request sent without re-authentication (an upload): the token,
        not the credentials, was refused.

        keystoneauth renews a token that has less than 120 s left before a request
        starts, so this is rare: a token revoked at Keystone, or expired there by a
        clock ahead of this host's. The token is dropped; the next attempt gets a
        new one. (Wrong credentials fail earlier, at Keystone, as permanent.)
        """
        with self._lock:
            connection = self._connection
        if connection is not None:
            connection.session.invalidate()
        problem = "Glance refused the token (HTTP 401: revoked or expired); a new one is fetched"
        return TransientError(self.message(action, problem))

    @property
    def _timeouts(self) -> tuple[float, float]:
        return (self.settings.connect_timeout, self.settings.read_timeout)

    def _prepared(
        self, connection: openstack.connection.Connection
    ) -> openstack.connection.Connection:
        """Keystone's requests and version discovery go through the connection's
        keystoneauth session, not the image proxy: give it both timeouts too, and
        track the sockets of its HTTP pools."""
        session: Any = connection.session
        session.timeout = self._timeouts  # keystoneauth hands it to requests as is
        adapters: list[Any] = list(session.session.adapters.values())
        for adapter in {id(adapter): adapter for adapter in adapters}.values():
            manager = adapter.poolmanager
            # A copy: urllib3's PoolManager starts with a module-level dict.
            manager.pool_classes_by_scheme = dict(manager.pool_classes_by_scheme)
            track_pools(manager.pool_classes_by_scheme, self.sockets)
        return connection

    def _proxy(self) -> Any:
        """The image proxy; the connection is opened once, on first use."""
        with self._lock:
            if self._connection is None:
                log.debug("site %s: opening cloud %r", self.site_id, self.settings.cloud)
                self._connection = self._prepared(
                    openstack.connect(
                        cloud=self.settings.cloud, api_timeout=self.settings.read_timeout
                    )
                )
            return self._connection.image


def skip(chunks: Iterator[bytes], count: int) -> Iterator[bytes]:
    """Drop the first ``count`` bytes of a stream (for a Glance that ignores Range)."""
    for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        yield chunk[count:]
        count = 0


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
