"""A rule's expected keys (rules/expect.py) and the engine's cursor through them."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("aggregates", "0011_webhook_rewinds"),
    ]

    operations = [
        migrations.AddField(
            model_name="rule",
            name="expect_every_seconds",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="rule",
            name="expect_from",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="rule",
            name="expect_key",
            field=models.CharField(blank=True, default="", max_length=200),
        ),
        migrations.AddField(
            model_name="rule",
            name="expect_next",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
    ]
