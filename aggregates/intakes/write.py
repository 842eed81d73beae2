"""Creating, replacing and removing intakes: the one way to, for the API and the
admin alike. Every template was checked by IntakeIn."""

from django.db import IntegrityError, transaction
from django.utils import timezone

from aggregates.errors import Conflict, StoreError
from aggregates.intakes.definition import IntakeIn
from aggregates.intakes.read import get_intake, read_intake
from aggregates.models import Intake
from aggregates.store import get_domain

# Paths under /intakes/ that are not intakes.
RESERVED_NAMES = frozenset({"preview"})


def create_intake(domain: str, definition: IntakeIn) -> dict:
    if definition.name in RESERVED_NAMES:
        raise StoreError(f"{definition.name!r} is a reserved name", field="name")
    found = get_domain(domain)
    try:
        with transaction.atomic():
            Intake.objects.create(domain=found, **definition.fields())
    except IntegrityError:
        raise Conflict(
            f"domain {domain!r} already has an intake named {definition.name!r}",
            field="name",
        ) from None
    return read_intake(domain, definition.name)


def replace_intake(domain: str, name: str, definition: IntakeIn) -> dict:
    """A whole new definition; the counts stay."""
    intake = get_intake(domain, name)
    if definition.name != name:
        raise Conflict(
            f"an intake's name is its identity: this is {name!r}, not "
            f"{definition.name!r} (create a new intake to use another name)",
            field="name",
        )
    Intake.objects.filter(pk=intake.pk).update(
        **definition.fields(), updated_at=timezone.now()
    )
    return read_intake(domain, name)


def delete_intake(domain: str, name: str) -> None:
    get_intake(domain, name).delete()
