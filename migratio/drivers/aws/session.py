"""Connections to one AWS site: a botocore session and its EC2, EBS and S3 clients.

Credentials come from boto3's default chain or the site's named ``profile``
(``AWS_SHARED_CREDENTIALS_FILE``/``AWS_CONFIG_FILE`` say where those files
are); migratio's own files never hold keys. Clients are made on first use, so a
driver for an unreachable site can still be built, and shared by the upload
threads (botocore clients are thread-safe; sessions are not, hence the lock).

Every session reads the service models through one process-wide loader: a
session of its own parses them again (EC2's alone is megabytes of JSON), and a
driver is made per migration step. Measured: four live sessions with EC2 and EBS
clients held 145 MiB with a loader each, 61 MiB sharing one. The models are
parsed into plain dicts, not botocore's OrderedDicts (dicts keep their order):
the EC2 and EBS clients then hold 16 MiB instead of 23 (peak 21 instead of 28).
The clients are plain botocore ones; boto3's additions (resources, S3 transfer
helpers) are not used.

The loader caches what it parsed, but only once a parse has finished: four
migrations reaching the site at once each parsed EC2's model, and each client
kept its own copy. Here the loader parses one file at a time, so the others find
the first one's result. Measured, four drivers' first EC2 call at once: peak RSS
120 MiB and 118 kept, against 180 and 163.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
from typing import Any

import botocore.config
import botocore.loaders
import botocore.session

from migratio import __version__
from migratio.config import AwsSite
from migratio.drivers.aws.errors import translated
from migratio.live_sockets import LiveSockets, track_pools


class AwsClients:
    """The clients of one site; ``ec2``, ``ebs`` and ``s3`` connect lazily.

    site_id: named in error messages.
    settings: region, profile, endpoint_url (emulators), ``connect_timeout`` and
        ``read_timeout`` per socket operation, ``request_attempts`` (botocore's
        "standard" retries, with backoff, of throttling and 5xx of one request,
        which AWS asks every client of the EBS direct APIs to retry; every call
        made here is safe to repeat; longer outages are migratio's retry
        policy's) and ``workers`` (the connection pool holds one per upload thread).

    Every socket the clients open is tracked, so ``abort`` can cut them.
    """

    def __init__(self, site_id: str, settings: AwsSite) -> None:
        self.site_id = site_id
        self.settings = settings
        self._lock = threading.Lock()
        self._session: botocore.session.Session | None = None
        self._clients: dict[str, Any] = {}
        self.sockets = LiveSockets()

    @property
    def ec2(self) -> Any:
        return self._client("ec2")

    @property
    def ebs(self) -> Any:
        return self._client("ebs")

    @property
    def s3(self) -> Any:
        return self._client("s3")

    def ec2_in(self, region: str) -> Any:
        """EC2 in another region (where AMIs are copied to), same credentials."""
        return self.ec2 if region == self.settings.region else self._client("ec2", region)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, {}
            self._session = None
        for client in clients.values():
            client.close()

    def abort(self) -> None:
        """Cut every open connection (any thread; never blocks)."""
        self.sockets.cut()

    def _client(self, service: str, region: str | None = None) -> Any:
        key = f"{service}@{region}" if region else service
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                with translated(self.site_id, f"connect to {service}"):
                    if self._session is None:
                        self._session = _session(self.settings.profile)
                    client = self._session.create_client(
                        service,
                        endpoint_url=self.settings.endpoint_url,
                        region_name=region or self.settings.region,
                        config=self._config(service, region),
                    )
                # botocore's pools (one dict per client, shared with its proxy pools).
                track_pools(client._endpoint.http_session._pool_classes_by_scheme, self.sockets)
                self._clients[key] = client
            return client

    def _config(self, service: str, region: str | None = None) -> botocore.config.Config:
        settings = self.settings
        options: dict[str, Any] = {
            "region_name": region or settings.region,
            "connect_timeout": settings.connect_timeout,
            "read_timeout": settings.read_timeout,
            "retries": {"mode": "standard", "total_max_attempts": settings.request_attempts},
            "max_pool_connections": settings.workers + 4,
            "user_agent_extra": f"migratio/{__version__}",
        }
        if service == "s3" and settings.endpoint_url:
            # An emulator on an IP address has no per-bucket host names.
            options["s3"] = {"addressing_style": "path"}
        return botocore.config.Config(**options)


_loader_lock = threading.Lock()
_loader: botocore.loaders.Loader | None = None


def _session(profile: str | None) -> botocore.session.Session:
    """A session for one site, reading models through the process's one loader."""
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = _OneParseLoader(file_loader=_PlainJsonFiles())
        loader = _loader
    session = botocore.session.Session(profile=profile)
    session.register_component("data_loader", loader)
    return session


class _OneParseLoader(botocore.loaders.Loader):  # type: ignore[misc]
    """botocore's loader, whose cached loads wait for one another: a model being
    parsed is parsed once, not once per thread that asks for it meanwhile."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._parsing = threading.RLock()  # re-entered: loading a model loads its parts

    def load_service_model(self, *args: Any, **kwargs: Any) -> Any:
        with self._parsing:
            return super().load_service_model(*args, **kwargs)

    def load_data_with_path(self, name: str) -> Any:
        with self._parsing:
            return super().load_data_with_path(name)


class _PlainJsonFiles:
    """botocore's model files (``.json`` or ``.json.gz``) parsed into plain dicts:
    the two methods botocore's ``Loader`` asks of its file loader."""

    _EXTENSIONS = (".json", ".json.gz")

    def exists(self, file_path: str) -> bool:
        return any(os.path.isfile(file_path + ext) for ext in self._EXTENSIONS)

    def load_file(self, file_path: str) -> Any:
        for ext in self._EXTENSIONS:
            path = file_path + ext
            if os.path.isfile(path):
                with gzip.open(path) if ext.endswith(".gz") else open(path, "rb") as handle:
                    return json.loads(handle.read().decode("utf-8"))
        return None
