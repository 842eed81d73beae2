"""Rules across keys: a rule's fallback; each status's facts of references to
neighbours; each event's inputs."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("aggregates", "0009_aggregate_key_dates"),
    ]

    operations = [
        migrations.AddField(
            model_name="rule",
            name="fallback",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.AlterField(
            model_name="ruleevent",
            name="reason",
            field=models.CharField(
                blank=True,
                choices=[
                    ("ready", "Ready"),
                    ("deadline", "Deadline"),
                    ("fallback", "Fallback"),
                ],
                default="",
                max_length=8,
            ),
        ),
        migrations.AddField(
            model_name="ruleevent",
            name="inputs",
            field=models.JSONField(default=dict),
        ),
        migrations.AddField(
            model_name="rulestatus",
            name="near_counts",
            field=models.JSONField(default=dict),
        ),
        migrations.AddField(
            model_name="rulestatus",
            name="near_newest",
            field=models.JSONField(default=dict),
        ),
    ]
