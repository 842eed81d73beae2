from django.apps import AppConfig


class AggregatesConfig(AppConfig):
    name = "aggregates"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from aggregates.live import events, hub

        # Every committed version is announced to this process's live delivery.
        events.on_versions_committed(hub.publish)
