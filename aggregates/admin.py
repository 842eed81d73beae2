from django import forms
from django.contrib import admin, messages
from pydantic import ValidationError

from aggregates import store
from aggregates.errors import StoreError, field_errors
from aggregates.intakes import write as intake_write
from aggregates.intakes.definition import IntakeIn
from aggregates.models import (
    Aggregate,
    ApiToken,
    Domain,
    Intake,
    Receipt,
    Rule,
    RuleEvent,
    Source,
    Version,
    Webhook,
    WebhookDelivery,
)
from aggregates.rules import write as rule_write
from aggregates.rules.definition import RuleIn
from aggregates.schemas import DomainIn
from aggregates.tokens import create_token, forget_all
from aggregates.values import isoformat, key_rule
from aggregates.webhooks import write as webhook_write
from aggregates.webhooks.write import WebhookChange, WebhookIn, check_target

admin.site.site_header = "Botlnek administration"
admin.site.site_title = "Botlnek admin"
admin.site.index_title = "Domains, rules, webhooks, intakes and tokens"


class DomainForm(forms.ModelForm):
    """A domain, checked as the API checks it."""

    class Meta:
        model = Domain
        fields = ["key", "attrs"]

    def clean(self):
        cleaned = super().clean()
        key = cleaned.get("key", self.instance.key) or ""
        try:
            DomainIn.model_validate({"key": key, "attrs": cleaned.get("attrs") or {}})
        except ValidationError as exc:
            _add_errors(self, exc)
        return cleaned


@admin.register(Domain)
class DomainAdmin(admin.ModelAdmin):
    form = DomainForm
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
            return
        created, _ = store.create_domain(obj.key, obj.attrs)
        obj.pk = created.pk
        obj.refresh_from_db()


def _add_errors(form: forms.ModelForm, exc: ValidationError, rename=None) -> None:
    """The API's refusal, on the form: each message on its field (or the form's)."""
    for name, message in field_errors(exc.errors()).items():
        field = rename(name) if rename else name
        form.add_error(field if field in form.fields else None, message)


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


def _rule_field(name: str) -> str:
    """The form's field for a field of the API's rule definition."""
    if name.startswith("deadline"):
        return "deadline_seconds"
    return {
        "expect": "expect_key",
        "expect.key": "expect_key",
        "expect.every": "expect_every_seconds",
        "expect.from": "expect_from",
    }.get(name, name)


class RuleForm(forms.ModelForm):
    """A rule's definition, checked as the API checks it."""

    class Meta:
        model = Rule
        fields = [
            "domain",
            "name",
            "when",
            "fallback",
            "trigger",
            "aggregate_prefix",
            "deadline_seconds",
            "deadline_from",
            "on_deadline",
            "start",
            "expect_key",
            "expect_every_seconds",
            "expect_from",
        ]

    def clean(self):
        cleaned = super().clean()
        instance = self.instance
        deadline = None
        if cleaned.get("deadline_seconds"):
            deadline = {
                "after": f"{cleaned['deadline_seconds']}s",
                "from": cleaned.get("deadline_from") or "first_source",
            }
        expect = None
        if cleaned.get("expect_key") or cleaned.get("expect_every_seconds"):
            expect = {
                "every": f"{cleaned.get('expect_every_seconds') or 0}s",
                "key": cleaned.get("expect_key") or "",
            }
            if cleaned.get("expect_from"):
                expect["from"] = isoformat(cleaned["expect_from"])
        try:
            # Name and start are fixed once a rule exists: the form leaves them out.
            self.definition = RuleIn.model_validate(
                {
                    "name": cleaned.get("name") or instance.name or "",
                    "when": cleaned.get("when") or "",
                    "fallback": cleaned.get("fallback") or None,
                    "trigger": cleaned.get("trigger"),
                    "aggregate_prefix": cleaned.get("aggregate_prefix") or "",
                    "deadline": deadline,
                    "on_deadline": cleaned.get("on_deadline"),
                    "start": cleaned.get("start") or instance.start,
                    "expect": expect,
                }
            )
            rule_write.check_name(self.definition.name)
        except ValidationError as exc:
            _add_errors(
                self,
                exc,
                _rule_field,
            )
        except StoreError as exc:
            self.add_error(exc.field, str(exc))
        return cleaned


def _rule_field(name: str) -> str:
    """The form field of a RuleIn field (the deadline's are one form field)."""
    return "deadline_seconds" if name.startswith("deadline") else name


@admin.register(Rule)
class RuleAdmin(admin.ModelAdmin):
    """Through the same writes as the API: adding is a POST, changing a PUT (the
    log and its seq stay), deleting a DELETE."""

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
        domain = obj.domain.key
        if change:
            rule_write.replace_rule(domain, obj.name, form.definition)
        else:
            rule_write.create_rule(domain, form.definition)
        saved = Rule.objects.get(domain=obj.domain, name=form.definition.name)
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request, obj):
        rule_write.delete_rule(obj.domain.key, obj.name)

    def delete_queryset(self, request, queryset):
        for rule in queryset.select_related("domain"):
            self.delete_model(request, rule)


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


class IntakeForm(forms.ModelForm):
    """An intake, checked as the API checks it: every template compiled."""

    class Meta:
        model = Intake
        fields = ["domain", "name", "aggregate", "collection", "keys", "attrs"]
        fields += ["each", "match"]

    def clean(self):
        cleaned = super().clean()
        try:
            self.definition = IntakeIn.model_validate(
                {
                    "name": cleaned.get("name") or self.instance.name or "",
                    "aggregate": cleaned.get("aggregate") or "",
                    "collection": cleaned.get("collection") or "",
                    "keys": cleaned.get("keys"),
                    "attrs": cleaned.get("attrs") or {},
                    "each": cleaned.get("each") or "",
                    "match": cleaned.get("match") or None,
                }
            )
        except ValidationError as exc:
            _add_errors(self, exc, rename=lambda name: name.split(".")[0])
        return cleaned


@admin.register(Intake)
class IntakeAdmin(admin.ModelAdmin):
    """Through the same writes as the API; the counts are the events'."""

    form = IntakeForm
    list_display = ["name", "domain", "aggregate", "accepted", "refused"]
    list_filter = ["domain"]
    list_select_related = ["domain"]
    search_fields = ["name"]
    readonly_fields = ["accepted", "refused", "last_refusal", "last_refusal_at"]
    readonly_fields += ["created_at", "updated_at"]

    def get_readonly_fields(self, request, obj=None):
        # Name and domain are the intake's identity (and its publishers' URL).
        return (
            [*self.readonly_fields, "domain", "name"] if obj else self.readonly_fields
        )

    def save_model(self, request, obj, form, change):
        domain = obj.domain.key
        if change:
            intake_write.replace_intake(domain, obj.name, form.definition)
        else:
            intake_write.create_intake(domain, form.definition)
        obj.pk = Intake.objects.get(domain=obj.domain, name=form.definition.name).pk
        obj.refresh_from_db()

    def delete_model(self, request, obj):
        intake_write.delete_intake(obj.domain.key, obj.name)

    def delete_queryset(self, request, queryset):
        for intake in queryset.select_related("domain"):
            self.delete_model(request, intake)


class WebhookForm(forms.ModelForm):
    """A webhook, checked as the API checks it: WebhookIn's rules, and a host that
    BOTLNEK_WEBHOOK_ALLOWED_HOSTS allows."""

    # The API's URL rule, not Django's (which refuses hosts without a dot).
    url = forms.CharField(max_length=2000)
    events = forms.MultipleChoiceField(
        choices=[
            ("version", "version: each new version of the domain"),
            ("rule.fired", "rule.fired: the rule's fired events"),
            ("rule.late", "rule.late: the rule's late events"),
        ],
        widget=forms.CheckboxSelectMultiple,
        help_text="Versions, or the events of the rule chosen below.",
    )

    class Meta:
        model = Webhook
        fields = ["domain", "url", "events", "rule", "description", "format", "paused"]

    def clean(self):
        cleaned = super().clean()
        domain = cleaned.get("domain") or getattr(self.instance, "domain", None)
        rule = cleaned.get("rule")
        if rule is not None and domain is not None and rule.domain_id != domain.pk:
            self.add_error("rule", f"{rule.name!r} is a rule of another domain")
        try:
            self.definition = WebhookIn.model_validate(
                {
                    "url": cleaned.get("url") or "",
                    "events": cleaned.get("events"),
                    "rule": rule.name if rule is not None else None,
                    "description": cleaned.get("description") or "",
                    "format": cleaned.get("format") or "standard",
                }
            )
        except ValidationError as exc:
            _add_errors(self, exc)
            return cleaned
        url = self.definition.url
        if self.instance.pk is None or url != self.instance.url:
            # Unchanged, it is not checked again: pausing a webhook whose host is
            # gone works.
            try:
                check_target(url)
            except StoreError as exc:
                self.add_error("url", f"{url} {exc}")
        return cleaned


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    """Health at a glance; the secret is shown once, when the webhook is made.
    Through the same writes as the API."""

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
    fields = ["domain", "url", "events", "rule", "description", "format", "paused"]
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
        domain = obj.domain.key
        definition = form.definition
        if change:
            changed = {
                name: getattr(definition, name)
                for name in ("url", "events", "rule", "description", "format")
                if name in form.changed_data
            }
            if "paused" in form.changed_data:
                changed["paused"] = obj.paused
            webhook_write.change_webhook(
                domain,
                obj.pk,
                WebhookChange.model_validate(changed),
                paused_reason="paused in the admin",
            )
        else:
            created = webhook_write.create_webhook(domain, definition)
            obj.pk = created["id"]
            if form.cleaned_data.get("paused"):
                pause = WebhookChange(paused=True)
                webhook_write.change_webhook(
                    domain, obj.pk, pause, paused_reason="paused in the admin"
                )
            messages.warning(
                request, f"The signing secret, shown this once: {created['secret']}"
            )
        obj.refresh_from_db()

    def delete_model(self, request, obj):
        webhook_write.delete_webhook(obj.domain.key, obj.pk)

    def delete_queryset(self, request, queryset):
        for webhook in queryset.select_related("domain"):
            self.delete_model(request, webhook)


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
