"""An EMULATION of EBS direct's parent snapshots, which moto ignores.

This is not AWS and not moto: moto 5 accepts ``StartSnapshot(ParentSnapshotId)``
but drops the parent, so a child snapshot reads as only the blocks written to
it. On AWS a child starts as a copy of its parent: ``ListSnapshotBlocks`` and
``GetSnapshotBlock`` on the child show every block of the parent that the child
did not overwrite, and the child's own blocks (zeros included) where it did.
Hooked into ``tests.support.moto_front.MotoFront`` (every other call goes to
moto unchanged), this module gives the child those semantics:

- ``StartSnapshot`` with ``ParentSnapshotId`` is forwarded; the front remembers
  child -> parent (``parents``) from moto's answer. A parent moto does not know
  is refused as AWS refuses it (``ResourceNotFoundException``, 404).
- ``ListSnapshotBlocks`` of a child lists the parent's blocks (recursively, for
  a chain) overlaid by the child's own, in one page. A block inherited from an
  ancestor gets a token naming that ancestor.
- ``GetSnapshotBlock`` with such a token reads the block from the ancestor.

So a test can rebuild a child snapshot block by block and compare it with the
disk it should hold. ``ListChangedBlocks`` and deletion of a parent with live
children (AWS keeps the data) are not emulated.
"""

from __future__ import annotations

import json
import re
import urllib.parse

from tests.support.moto_front import FrontRequest, FrontResponse, MotoFront

BLOCK_LIST = re.compile(r"^/snapshots/(?P<snapshot>[^/]+)/blocks$")
BLOCK_GET = re.compile(r"^/snapshots/(?P<snapshot>[^/]+)/blocks/(?P<index>\d+)$")
INHERITED = "emulated-parent"


class EbsParentEmulation:
    """Parent semantics for moto's EBS direct snapshots, in front of it."""

    def __init__(self, front: MotoFront) -> None:
        self.front = front
        self.parents: dict[str, str] = {}
        # The ParentSnapshotId of every StartSnapshot seen (None: started empty).
        self.starts: list[str | None] = []
        front.hooks.append(self.handle)

    def handle(self, request: FrontRequest) -> FrontResponse | None:
        url = urllib.parse.urlsplit(request.path)
        if request.method == "POST" and url.path == "/snapshots":
            return self._start(request)
        if request.method != "GET":
            return None
        listed = BLOCK_LIST.match(url.path)
        if listed and listed["snapshot"] in self.parents:
            return self._list(request, listed["snapshot"])
        got = BLOCK_GET.match(url.path)
        token = urllib.parse.parse_qs(url.query).get("blockToken", [""])[-1]
        if got and token.startswith(f"{INHERITED}/"):
            _, owner, own_token = token.split("/", 2)
            query = urllib.parse.urlencode({"blockToken": own_token})
            path = f"/snapshots/{owner}/blocks/{got['index']}?{query}"
            return self.front.forward(FrontRequest("GET", path, request.headers, b""))
        return None

    def _start(self, request: FrontRequest) -> FrontResponse | None:
        parent = json.loads(request.body or b"{}").get("ParentSnapshotId")
        self.starts.append(parent)
        if not parent:
            return None
        if self._blocks_of(request, parent) is None:
            body = {"Message": f"The parent snapshot {parent} does not exist"}
            headers = {"x-amzn-ErrorType": "ResourceNotFoundException"}
            return FrontResponse(404, json.dumps(body).encode(), headers)
        response = self.front.forward(request)
        if 200 <= response.status < 300:
            self.parents[str(json.loads(response.body)["SnapshotId"])] = parent
        return response

    def _list(self, request: FrontRequest, snapshot: str) -> FrontResponse:
        own = self.front.forward(
            FrontRequest("GET", f"/snapshots/{snapshot}/blocks", request.headers, b"")
        )
        if not 200 <= own.status < 300:
            return own
        answer = json.loads(own.body)
        blocks = self._blocks_of(request, snapshot) or {}
        answer["Blocks"] = [
            {"BlockIndex": index, "BlockToken": token} for index, token in sorted(blocks.items())
        ]
        answer.pop("NextToken", None)
        return FrontResponse(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})

    def _blocks_of(self, request: FrontRequest, snapshot: str) -> dict[int, str] | None:
        """Every block a snapshot reads as (index -> token), its ancestors' included;
        None when moto does not know the snapshot."""
        own = self.front.forward(
            FrontRequest("GET", f"/snapshots/{snapshot}/blocks", request.headers, b"")
        )
        if not 200 <= own.status < 300:
            return None
        blocks: dict[int, str] = {}
        parent = self.parents.get(snapshot)
        if parent is not None:
            for index, token in (self._blocks_of(request, parent) or {}).items():
                if not token.startswith(f"{INHERITED}/"):
                    token = f"{INHERITED}/{parent}/{token}"
                blocks[index] = token
        for block in json.loads(own.body).get("Blocks", []):
            blocks[int(block["BlockIndex"])] = str(block["BlockToken"])
        return blocks
