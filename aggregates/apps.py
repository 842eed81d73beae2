from django.apps import AppConfig


class AggregatesConfig(AppConfig):
    name = "aggregates"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from aggregates import announcements, metrics, serving
        from aggregates.live import hub
        from aggregates.rules.engine import engine
        from aggregates.webhooks.worker import worker

        # What commits is announced to this process's live delivery; the domains
        # with rules are stepped soon after, the delivery worker told, versions counted.
        announcements.versions_committed.connect(hub.publish)
        announcements.rule_events_committed.connect(hub.publish_rule_events)
        announcements.versions_committed.connect(engine.versions_committed)
        announcements.versions_committed.connect(worker.committed)
        announcements.versions_committed.connect(metrics.versions_committed)
        announcements.rule_events_committed.connect(worker.committed)
        # Rules and webhooks written (by the API, the admin or a command): the
        # engine steps their domain, the delivery worker looks at it.
        announcements.rules_changed.connect(engine.rules_changed)
        announcements.webhooks_changed.connect(worker.webhooks_changed)
        serving.in_background(engine.clock)
        serving.in_background(worker.run)
