import json

from django import template

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
