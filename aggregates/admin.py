from django import forms
from django.contrib import admin, messages
from pydantic import ValidationError

from aggregates.errors import StoreError, field_errors
from aggregates.models import (
    Aggregate,
    ApiToken,
    Domain,
    Receipt,
    Rule,
    RuleEvent,
    Source,
    Version,
    Webhook,
    WebhookDelivery,
)
from aggregates.rules.definition import RuleIn
from aggregates.rules.write import reexamine, start_position
from aggregates.tokens import create_token, forget_all
from aggregates.values import key_rule
from aggregates.webhooks.targets import url_rule
from aggregates.webhooks.write import check_target, new_secret, resume, start_cursor


@admin.register(Domain)
class DomainAdmin(admin.ModelAdmin):
    list_display = ["key", "aggregate_count", "latest_position", "created_at"]
    search_fields = ["key"]
    readonly_fields = ["latest_position", "aggregate_count", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        # A domain's key is its identity for publishers and tokens: fixed once made.
        return [*self.readonly_fields, "key"] if obj else self.readonly_fields

    def has_delete_permission(self, request, obj=None):
        return False  # only `manage.py prune` deletes, and only whole aggregates

    def save_model(self, request, obj, form, change):
        if change:
            # Only attrs: the counters belong to the write path, and saving the copy
            # loaded with the form would put them back behind concurrent posts.
            obj.save(update_fields=["attrs"])
        else:
            super().save_model(request, obj, form, change)


class ReadOnlyAdmin(admin.ModelAdmin):
    """History is append-only: the admin shows it and never changes it."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Aggregate)
class AggregateAdmin(ReadOnlyAdmin):
    list_display = ["key", "domain", "version", "counts", "updated_at"]
    list_filter = ["domain"]
    list_select_related = ["domain"]
    search_fields = ["key"]
    date_hierarchy = "updated_at"
    ordering = ["-updated_at"]


@admin.register(Version)
class VersionAdmin(ReadOnlyAdmin):
    list_display = ["number", "aggregate_key", "domain", "position", "collection", "at"]
    list_filter = ["domain"]
    list_select_related = ["aggregate", "domain", "source"]
    search_fields = ["aggregate__key"]
    ordering = ["-id"]

    @admin.display(description="aggregate", ordering="aggregate__key")
    def aggregate_key(self, version: Version) -> str:
        return version.aggregate.key

    @admin.display(description="collection", ordering="source__collection")
    def collection(self, version: Version) -> str:
        return version.source.collection


@admin.register(Source)
class SourceAdmin(ReadOnlyAdmin):
    list_display = ["collection", "aggregate_key", "version_number", "keys", "key"]
    list_filter = ["aggregate__domain"]
    list_select_related = ["aggregate", "version"]
    search_fields = ["aggregate__key", "collection", "key"]
    ordering = ["-id"]

    @admin.display(description="aggregate", ordering="aggregate__key")
    def aggregate_key(self, source: Source) -> str:
        return source.aggregate.key

    @admin.display(description="version", ordering="version__number")
    def version_number(self, source: Source) -> int:
        return source.version.number


@admin.register(Receipt)
class ReceiptAdmin(ReadOnlyAdmin):
    list_display = ["watcher", "aggregate", "version", "outcome", "exit_code", "at"]
    list_filter = ["outcome", "watcher"]
    list_select_related = ["aggregate"]
    search_fields = ["aggregate__key", "watcher"]
    ordering = ["-id"]


class RuleForm(forms.ModelForm):
    """A rule's definition, checked as the API checks it."""

    class Meta:
        model = Rule
        fields = [
            "domain",
            "name",
            "when",
            "trigger",
            "aggregate_prefix",
            "deadline_seconds",
            "deadline_from",
            "on_deadline",
            "start",
        ]

    def clean(self):
        cleaned = super().clean()
        deadline = None
        if cleaned.get("deadline_seconds"):
            deadline = {
                "after": f"{cleaned['deadline_seconds']}s",
                "from": cleaned.get("deadline_from") or "first_source",
            }
        try:
            RuleIn.model_validate(
                {
                    "name": cleaned.get("name") or "",
                    "when": cleaned.get("when") or "",
                    "trigger": cleaned.get("trigger"),
                    "aggregate_prefix": cleaned.get("aggregate_prefix") or "",
                    "deadline": deadline,
                    "on_deadline": cleaned.get("on_deadline"),
                    "start": cleaned.get("start"),
                }
            )
        except ValidationError as exc:
            for name, message in field_errors(exc.errors()).items():
                field = "deadline_seconds" if name.startswith("deadline") else name
                self.add_error(field if field in self.fields else None, message)
        return cleaned


@admin.register(Rule)
class RuleAdmin(admin.ModelAdmin):
    """Changing a definition here is a PUT: the log and its seq stay."""

    form = RuleForm
    list_display = ["name", "domain", "when", "trigger", "latest_seq", "created_at"]
    list_filter = ["domain", "trigger"]
    list_select_related = ["domain"]
    search_fields = ["name", "when"]
    readonly_fields = ["position", "latest_seq", "created_at"]

    def get_readonly_fields(self, request, obj=None):
        # Name and domain are the rule's identity; where it started is history.
        fixed = ["domain", "name", "start"] if obj else []
        return [*self.readonly_fields, *fixed]

    def save_model(self, request, obj, form, change):
        if change:
            fields = [
                name for name in form.changed_data if name in RuleForm.Meta.fields
            ]
            obj.save(update_fields=fields or None)
            reexamine(obj, obj.trigger)  # as a PUT does
            return
        obj.position = start_position(obj.domain, obj.start)
        super().save_model(request, obj, form, change)


@admin.register(RuleEvent)
class RuleEventAdmin(ReadOnlyAdmin):
    list_display = [
        "seq",
        "rule",
        "event",
        "reason",
        "aggregate",
        "version",
        "late",
        "at",
    ]
    list_filter = ["event", "rule"]
    list_select_related = ["rule"]
    search_fields = ["aggregate"]
    ordering = ["-id"]


class WebhookForm(forms.ModelForm):
    """A webhook's URL, checked as the API checks it: its host must be one
    BOTLNEK_WEBHOOK_ALLOWED_HOSTS allows."""

    # The API's URL rule, not Django's (which refuses hosts without a dot).
    url = forms.CharField(max_length=2000)

    class Meta:
        model = Webhook
        fields = ["domain", "url", "events", "rule", "description", "paused"]

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        if self.instance.pk is not None and url == self.instance.url:
            return url  # unchanged: pausing a webhook whose host is gone works
        try:
            url_rule(url)
            check_target(url)
        except (ValueError, StoreError) as exc:
            raise forms.ValidationError(f"{url} {exc}") from None
        return url


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    """Health at a glance; the secret is shown once, when the webhook is made."""

    form = WebhookForm

    list_display = [
        "url",
        "domain",
        "events",
        "rule",
        "paused",
        "last_status",
        "last_success_at",
        "failing_since",
    ]
    list_filter = ["domain", "paused"]
    list_select_related = ["domain", "rule"]
    search_fields = ["url", "description"]
    fields = ["domain", "url", "events", "rule", "description", "paused"]
    readonly_fields = [
        "paused_reason",
        "cursor",
        "attempts",
        "failing_since",
        "next_attempt_at",
        "last_status",
        "last_error",
        "last_attempt_at",
        "last_success_at",
        "created_at",
    ]

    def get_fields(self, request, obj=None):
        return [*self.fields, *self.readonly_fields] if obj else self.fields

    def save_model(self, request, obj, form, change):
        if not change:
            obj.secret = new_secret()
            obj.cursor = start_cursor(obj.domain, obj.rule)
            super().save_model(request, obj, form, change)
            messages.warning(
                request, f"The signing secret, shown this once: {obj.secret}"
            )
            return
        # As a PUT does: another stream starts from what comes next on.
        if "rule" in form.changed_data:
            obj.cursor = start_cursor(obj.domain, obj.rule)
        if "paused" in form.changed_data:
            if obj.paused:
                obj.paused_reason = "paused in the admin"
            else:
                resume(obj)
        super().save_model(request, obj, form, change)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "event_id",
        "webhook",
        "attempt",
        "status_code",
        "error",
        "ms",
        "at",
    ]
    list_filter = ["webhook"]
    list_select_related = ["webhook"]
    ordering = ["-id"]


class TokenForm(forms.ModelForm):
    domains = forms.CharField(
        required=False,
        help_text="Domain keys this token is limited to, separated by spaces or "
        "commas; empty means every domain.",
    )

    class Meta:
        model = ApiToken
        fields = ["name", "scope", "domains", "revoked_at"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["domains"] = " ".join(self.instance.domains)

    def clean_domains(self) -> list[str]:
        keys = self.cleaned_data["domains"].replace(",", " ").split()
        check = key_rule(100)
        for key in keys:
            try:
                check(key)
            except ValueError as exc:
                raise forms.ValidationError(f"{key!r} {exc}") from None
        return sorted(set(keys))


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = TokenForm
    list_display = [
        "name",
        "prefix",
        "scope",
        "domain_list",
        "created_at",
        "revoked_at",
    ]
    list_filter = ["scope", "revoked_at"]
    search_fields = ["name", "prefix"]

    @admin.display(description="domains")
    def domain_list(self, token: ApiToken) -> str:
        return ", ".join(token.domains) or "all"

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            forget_all()  # a revocation or a narrower scope applies at once
            return
        token, raw = create_token(name=obj.name, scope=obj.scope, domains=obj.domains)
        obj.pk = token.pk
        obj.refresh_from_db()
        messages.warning(request, f"The new token, shown this once; copy it now: {raw}")
