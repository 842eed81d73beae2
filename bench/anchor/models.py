from django.db import models


class PlainSource(models.Model):
    """A source as a plain Django app would keep it: one row per post."""

    domain = models.CharField(max_length=100)
    aggregate = models.CharField(max_length=200)
    collection = models.CharField(max_length=200)
    keys = models.JSONField(default=dict)
    attrs = models.JSONField(default=dict)
    at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.domain}/{self.aggregate}/{self.collection}"
