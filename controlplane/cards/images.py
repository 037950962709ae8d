"""Card image formats: which are accepted, and recognising them by their magic bytes.

The declared ``Content-Type`` is never trusted on its own: the bytes must start with the signature of
that very format (JPEG ``FF D8 FF``, PNG ``89 50 4E 47 0D 0A 1A 0A``, WebP ``RIFF....WEBP``), else the
upload is refused with 415. Nothing here decodes the image; only the signature is checked.
"""

from __future__ import annotations

import enum

from controlplane.cards.errors import UnsupportedImage

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"


class ImageFormat(enum.Enum):
    """An accepted image format: its media type and the file extension its stored objects get."""

    JPEG = ("image/jpeg", "jpg")
    PNG = ("image/png", "png")
    WEBP = ("image/webp", "webp")

    @property
    def content_type(self) -> str:
        return self.value[0]

    @property
    def extension(self) -> str:
        return self.value[1]


ACCEPTED_CONTENT_TYPES = tuple(f.content_type for f in ImageFormat)


def sniff(data: bytes) -> ImageFormat | None:
    """The format ``data`` starts like, or None."""
    if data.startswith(_JPEG):
        return ImageFormat.JPEG
    if data.startswith(_PNG):
        return ImageFormat.PNG
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ImageFormat.WEBP
    return None


def media_type(header: str | None) -> str:
    """The bare, lower-case media type of a ``Content-Type`` header (parameters dropped)."""
    return (header or "").split(";", 1)[0].strip().lower()


def check_image(content_type: str | None, data: bytes) -> ImageFormat:
    """The format of ``data`` if it is accepted and matches ``content_type``; ``UnsupportedImage`` if not."""
    declared = media_type(content_type)
    accepted = ", ".join(ACCEPTED_CONTENT_TYPES)
    if declared not in ACCEPTED_CONTENT_TYPES:
        raise UnsupportedImage(
            f"Content-Type must be one of {accepted}, got {declared or 'none'}", accepted=list(ACCEPTED_CONTENT_TYPES)
        )
    found = sniff(data)
    if found is None:
        raise UnsupportedImage(
            f"the body is not a {accepted} image (unrecognised signature)", accepted=list(ACCEPTED_CONTENT_TYPES)
        )
    if found.content_type != declared:
        raise UnsupportedImage(
            f"Content-Type says {declared} but the body is {found.content_type}",
            declared=declared,
            detected=found.content_type,
        )
    return found
