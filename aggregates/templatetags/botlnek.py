import json
import re
from datetime import datetime

from django import template
from django.utils.html import escape, format_html
from django.utils.safestring import mark_safe

from aggregates.values import utc

register = template.Library()


@register.filter
def get_item(mapping: dict, key: str):
    return mapping.get(key)


@register.filter
def pretty_json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


@register.filter
def pairs(keys: dict) -> str:
    """A source's keys as `run=am site=eu`, the way `botlnek post` takes them."""
    return " ".join(f"{key}={value}" for key, value in sorted(keys.items())) or "—"


@register.simple_tag
def clock(moment: datetime | str | None) -> str:
    """A moment as every page shows it: `2026-12-02 16:00:44 UTC` in a <time>
    (botlnek.js shows it in the browser's zone instead when asked to). Takes a
    datetime or the API's ISO text."""
    if not moment:
        return ""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    moment = utc(moment)
    return format_html(
        '<time datetime="{}">{} UTC</time>',
        moment.isoformat().replace("+00:00", "Z"),
        moment.strftime("%Y-%m-%d %H:%M:%S"),
    )


_SEPARATORS = re.compile(r"([/?&=.:-])")


@register.filter
def breakable(text: str) -> str:
    """A URL or path that a narrow screen may break after its separators (/ ? & =
    . : -), never inside a word."""
    return mark_safe(_SEPARATORS.sub(r"\1<wbr>", escape(str(text))))
