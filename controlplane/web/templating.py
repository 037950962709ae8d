"""The pages' Jinja2 environment: autoescaped, strict about undefined names, with the filters the
templates share and ``static(name)``, a static file's URL carrying its content hash (so it can be
cached for a year and still change with a release)."""

from __future__ import annotations

import functools
import hashlib
import math
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig

WEB_DIR = Path(__file__).parent
TEMPLATE_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"
#: Where the static files are served.
STATIC_PATH = "/static"

#: What an unknown value shows as (an en dash).
DASH = "\u2013"
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(value: float | int | None) -> str:
    """``1536`` -> ``1.5 KiB``; ``None`` -> an en dash."""
    if value is None:
        return DASH
    size = float(value)
    unit = 0
    while abs(size) >= 1024 and unit < len(_UNITS) - 1:
        size /= 1024
        unit += 1
    return f"{size:.0f} {_UNITS[unit]}" if unit == 0 or abs(size) >= 100 else f"{size:.1f} {_UNITS[unit]}"


def human_number(value: float | int | None) -> str:
    """``12345`` -> ``12,345``; ``None`` -> an en dash."""
    if value is None:
        return DASH
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def percent(part: float | int | None, whole: float | int | None) -> float:
    """``part`` of ``whole`` in percent, clamped to 0..100 (0 when either is unknown or ``whole`` is 0)."""
    if part is None or not whole:
        return 0.0
    share = 100.0 * float(part) / float(whole)
    return 0.0 if math.isnan(share) else max(0.0, min(100.0, share))


def when(moment: datetime | None) -> str:
    """A timestamp as ``2026-12-07 06:15 UTC``; ``None`` -> an en dash."""
    if moment is None:
        return DASH
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


@functools.cache
def _digest(name: str) -> str:
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]


def static(name: str) -> str:
    """URL of static file ``name`` with its content hash (``/static/app.css?v=...``)."""
    return f"{STATIC_PATH}/{name}?v={_digest(name)}"


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(bytes=human_bytes, number=human_number, when=when)
    env.globals.update(static=static, percent=percent)
    return env


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment()))
