"""The app's tables, by what they hold:

    history.py   domains, aggregates, their append-only versions and sources, receipts
    rules.py     rules, statuses, rule events
    webhooks.py  webhooks and their delivery log
    intakes.py   intakes: publishers' events mapped to sources
    access.py    API tokens, leases, idempotent answers

Rows of Aggregate, Version and Source are written only by aggregates.store, and
by a restore of a backup (aggregates/management/restore.py).
"""

from aggregates.models.access import ApiToken, IdempotentRequest, Lease
from aggregates.models.history import (
    KEY_VALIDATOR,
    Aggregate,
    Domain,
    Receipt,
    Source,
    Version,
)
from aggregates.models.intakes import Intake
from aggregates.models.rules import Rule, RuleEvent, RuleStatus
from aggregates.models.webhooks import Webhook, WebhookDelivery

__all__ = [
    "KEY_VALIDATOR",
    "Aggregate",
    "ApiToken",
    "Domain",
    "IdempotentRequest",
    "Intake",
    "Lease",
    "Receipt",
    "Rule",
    "RuleEvent",
    "RuleStatus",
    "Source",
    "Version",
    "Webhook",
    "WebhookDelivery",
]
