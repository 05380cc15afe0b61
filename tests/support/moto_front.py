"""A forwarding HTTP front for the test bed's moto, for what tests need moto lacks.

Every request is passed to moto unchanged unless a hook answers it first (the
VM Import emulation does, and the EBS parent snapshot emulation,
``ebs_parent_emulation``, for the parent semantics moto lacks). The front also counts the EBS direct
``PutSnapshotBlock`` calls moto answered, per snapshot and block index -- a
witness independent of migratio's own journal -- and can slow them down
(``block_delay``), as a slow link to AWS would, so a test can stop a daemon
mid-upload. It keeps the JSON bodies of EBS direct calls other than blocks
(``ebs_calls``: what StartSnapshot asked, which moto ignores in part), and can
hold the AMIs of some regions ``pending`` (``hold_images``), as AWS shows a
copy being made, which moto makes at once.
"""

from __future__ import annotations

import http.client
import json
import re
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BLOCK_PUT = re.compile(r"^/snapshots/(?P<snapshot>[^/]+)/blocks/(?P<index>\d+)$")
# The region of a signed request: ``Credential=<key>/<date>/<region>/<service>/aws4_request``.
SIGNED_REGION = re.compile(r"Credential=[^/]+/\d+/(?P<region>[^/]+)/")
AVAILABLE = b"<imageState>available</imageState>"
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "expect"}
)


@dataclass
class FrontRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, str]:
        """The fields of an EC2 Query API call (a form-encoded POST), else empty."""
        if "x-www-form-urlencoded" not in self.headers.get("content-type", ""):
            return {}
        fields = urllib.parse.parse_qs(self.body.decode("utf-8"), keep_blank_values=True)
        return {key: values[-1] for key, values in fields.items()}


@dataclass
class FrontResponse:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


Hook = Callable[[FrontRequest], FrontResponse | None]


class MotoFront:
    """Listens on a free loopback port and forwards to ``upstream`` (moto's URL).

    block_delay: seconds each PutSnapshotBlock waits before it is forwarded.
    """

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.block_delay = 0.0
        self.block_puts: Counter[tuple[str, int]] = Counter()
        self.hooks: list[Hook] = []
        # Every request seen: (method, path with query, EC2 Query API fields if any).
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        # EBS direct calls with a JSON body: (method, path, body).
        self.ebs_json: list[tuple[str, str, dict[str, Any]]] = []
        # Regions whose available AMIs DescribeImages reports pending.
        self.held_regions: set[str] = set()
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> MotoFront:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def puts_for(self, snapshot_id: str) -> Counter[int]:
        with self._lock:
            return Counter(
                {index: n for (snap, index), n in self.block_puts.items() if snap == snapshot_id}
            )

    def ec2_calls(self, action: str) -> list[dict[str, str]]:
        """The fields of every EC2 Query API call of that action seen so far."""
        with self._lock:
            return [form for _, _, form in self.requests if form.get("Action") == action]

    def ebs_calls(self, method: str, path: str) -> list[dict[str, Any]]:
        """The JSON bodies of every EBS direct call to ``path`` seen so far."""
        with self._lock:
            return [body for m, p, body in self.ebs_json if (m, p) == (method, path)]

    def hold_images(self, *regions: str) -> None:
        """Report the AMIs of ``regions`` pending until ``release_images``."""
        with self._lock:
            self.held_regions |= set(regions)

    def release_images(self) -> None:
        with self._lock:
            self.held_regions.clear()

    def answer(self, request: FrontRequest) -> FrontResponse:
        form = request.form()
        with self._lock:
            self.requests.append((request.method, request.path, form))
            if request.headers.get("content-type", "").startswith("application/json"):
                path = urllib.parse.urlsplit(request.path).path
                if request.body and not BLOCK_PUT.match(path):
                    self.ebs_json.append((request.method, path, json.loads(request.body)))
        for hook in self.hooks:
            response = hook(request)
            if response is not None:
                return response
        put = BLOCK_PUT.match(urllib.parse.urlsplit(request.path).path)
        if put and request.method == "PUT" and self.block_delay:
            time.sleep(self.block_delay)
        response = self.forward(request)
        if put and request.method == "PUT" and 200 <= response.status < 300:
            with self._lock:
                self.block_puts[(put["snapshot"], int(put["index"]))] += 1
        if form.get("Action") == "DescribeImages" and self._held(request):
            response.body = response.body.replace(AVAILABLE, b"<imageState>pending</imageState>")
        return response

    def _held(self, request: FrontRequest) -> bool:
        signed = SIGNED_REGION.search(request.headers.get("authorization", ""))
        with self._lock:
            return signed is not None and signed["region"] in self.held_regions

    def forward(self, request: FrontRequest) -> FrontResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Content-Length"] = str(len(request.body))
        connection = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            connection.request(request.method, request.path, body=request.body, headers=headers)
            upstream = connection.getresponse()
            body = upstream.read()
            answer = {k: v for k, v in upstream.getheaders() if k.lower() not in HOP_BY_HOP}
            return FrontResponse(upstream.status, body, answer)
        finally:
            connection.close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed mid-request (the SIGKILL tests) is expected, not news.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(front: MotoFront) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            request = FrontRequest(
                self.command,
                self.path,
                {key.lower(): value for key, value in self.headers.items()},
                self._body(),
            )
            try:
                response = front.answer(request)
            except Exception as exc:  # the front must answer, whatever broke
                response = FrontResponse(502, f"front: {exc!r}".encode())
            self.send_response(response.status)
            for key, value in response.headers.items():
                if key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
