"""Plain HTTP to the bed's own loopback services (stdlib only: no client sessions to leak)."""

import urllib.request
from collections.abc import Mapping
from email.message import Message


def call(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30,
) -> tuple[int, Message]:
    """Send one request; return status and headers. Raises OSError (incl. HTTPError) on failure.

    Only http:// URLs: every URL here is one the bed built itself.
    """
    if not url.startswith("http://"):
        raise ValueError(f"not a loopback http URL: {url}")
    request = urllib.request.Request(url, data=body, headers=dict(headers or {}), method=method)  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        response.read()
        return response.status, response.headers
