import json
from datetime import datetime

from django import template
from django.utils.html import format_html

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
def utc_time(moment: datetime) -> str:
    """A <time> for botlnek.js to localise; one call per cell, not three date
    filters (a big aggregate's page has dozens of them)."""
    return format_html(
        '<time datetime="{}" title="{} UTC">{}</time>',
        moment.isoformat(),
        moment.strftime("%Y-%m-%d %H:%M:%S.%f"),
        moment.strftime("%Y-%m-%d %H:%M:%S"),
    )
