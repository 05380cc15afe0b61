"""Which of a source image's properties a copy may carry, given what was done to
its bytes. The families themselves (``hw_*``, ``os_*``, ``img_*``) are chosen
where the source is read; the table of every family is docs/image-fidelity.md.
"""

from __future__ import annotations

from collections.abc import Mapping

# Glance's image-signature properties (img_signature, _hash_method, _key_type,
# _certificate_uuid): a signature over the source's bytes. Converted bytes no
# longer verify, and Nova refuses to boot an image whose signature fails.
SIGNATURE_PREFIX = "img_signature"


def carried_properties(
    properties: Mapping[str, str], *, converted: bool
) -> tuple[dict[str, str], list[str]]:
    """The properties the copy carries, and the names dropped (sorted)."""
    if not converted:
        return dict(properties), []
    dropped = sorted(key for key in properties if key.startswith(SIGNATURE_PREFIX))
    return {k: v for k, v in properties.items() if k not in dropped}, dropped
