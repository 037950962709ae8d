"""Card image checks (``controlplane.cards.images``): magic-byte sniffing and Content-Type matching."""

from __future__ import annotations

import pytest

from controlplane.cards.errors import UnsupportedImage
from controlplane.cards.images import ACCEPTED_CONTENT_TYPES, ImageFormat, check_image, media_type, sniff

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 "


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (JPEG, ImageFormat.JPEG),
        (b"\xff\xd8\xff", ImageFormat.JPEG),  # the signature alone
        (b"\xff\xd8\xff\xdb" + bytes(10), ImageFormat.JPEG),  # raw JPEG (no JFIF/Exif header)
        (PNG, ImageFormat.PNG),
        (WEBP, ImageFormat.WEBP),
        (b"RIFF\xff\xff\xff\xffWEBP", ImageFormat.WEBP),  # any chunk size
        (b"", None),
        (b"\xff\xd8", None),  # truncated JPEG
        (b"\x89PNG\r\n\x1a", None),  # truncated PNG
        (b"\x89PNG\n\r\x1a\n", None),  # line endings mangled in transit
        (b"RIFF\x00\x00\x00\x00WAVE", None),  # RIFF, but audio
        (b"RIFF\x00\x00\x00WEBP", None),  # WEBP one byte early
        (b"GIF89a" + bytes(10), None),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
        (b"%PDF-1.7", None),
        (b" " + JPEG, None),  # the signature must be at the very start
    ],
)
def test_sniff(data: bytes, expected: ImageFormat | None) -> None:
    assert sniff(data) is expected


def test_formats() -> None:
    assert ACCEPTED_CONTENT_TYPES == ("image/jpeg", "image/png", "image/webp")
    assert [(f.content_type, f.extension) for f in ImageFormat] == [
        ("image/jpeg", "jpg"),
        ("image/png", "png"),
        ("image/webp", "webp"),
    ]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("image/png", "image/png"),
        ("IMAGE/PNG", "image/png"),
        (" image/png ; charset=binary", "image/png"),
        ("", ""),
        (None, ""),
    ],
)
def test_media_type(header: str | None, expected: str) -> None:
    assert media_type(header) == expected


@pytest.mark.parametrize(
    ("content_type", "data", "expected"),
    [
        ("image/jpeg", JPEG, ImageFormat.JPEG),
        ("image/png", PNG, ImageFormat.PNG),
        ("Image/WebP", WEBP, ImageFormat.WEBP),
    ],
)
def test_accepted(content_type: str, data: bytes, expected: ImageFormat) -> None:
    assert check_image(content_type, data) is expected


@pytest.mark.parametrize(
    ("content_type", "data", "says"),
    [
        ("image/png", JPEG, "says image/png but the body is image/jpeg"),
        ("image/jpeg", WEBP, "says image/jpeg but the body is image/webp"),
        ("image/webp", PNG, "says image/webp but the body is image/png"),
        ("image/png", b"not an image", "unrecognised signature"),
        ("image/png", b"", "unrecognised signature"),
        ("image/gif", b"GIF89a", "Content-Type must be one of"),
        ("image/jpg", JPEG, "Content-Type must be one of"),  # not a registered type
        ("application/octet-stream", PNG, "Content-Type must be one of"),
        (None, PNG, "got none"),
        ("", PNG, "got none"),
    ],
)
def test_refused_with_415(content_type: str | None, data: bytes, says: str) -> None:
    with pytest.raises(UnsupportedImage) as caught:
        check_image(content_type, data)
    assert caught.value.status == 415 and caught.value.code == "unsupported_media_type"
    assert says in caught.value.detail
