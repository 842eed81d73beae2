"""Intakes as the API shows them: the definition, the counts, the last refusal."""

from typing import Any

from aggregates.errors import NotFound
from aggregates.intakes.definition import definition_json
from aggregates.models import Intake
from aggregates.store import get_domain
from aggregates.values import isoformat


def get_intake(domain: str, name: str) -> Intake:
    try:
        return Intake.objects.select_related("domain").get(
            domain__key=domain, name=name
        )
    except Intake.DoesNotExist:
        get_domain(domain)
        raise NotFound(f"intake {name!r} does not exist in {domain!r}") from None


def intake_json(intake: Intake) -> dict[str, Any]:
    return {
        **definition_json(intake),
        "accepted": intake.accepted,
        "refused": intake.refused,
        "last_refusal": intake.last_refusal or None,
        "last_refusal_at": (
            isoformat(intake.last_refusal_at) if intake.last_refusal_at else None
        ),
        "created_at": isoformat(intake.created_at),
        "updated_at": isoformat(intake.updated_at),
    }


def list_intakes(domain: str, *, limit: int, after: str | None) -> list[dict[str, Any]]:
    rows = Intake.objects.filter(domain=get_domain(domain)).order_by("name")
    if after is not None:
        rows = rows.filter(name__gt=after)
    return [intake_json(intake) for intake in rows[:limit]]


def read_intake(domain: str, name: str) -> dict[str, Any]:
    return intake_json(get_intake(domain, name))
