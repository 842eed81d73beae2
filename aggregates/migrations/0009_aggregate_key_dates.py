"""Each aggregate keeps its key's date (aggregates/keydates.py): the key with its
date replaced by a mark, the date's shape and the date, so that rules find an
aggregate's neighbours on an index. Existing aggregates are filled here; new ones
by the write path — on PostgreSQL, botlnek_register() takes them as three more
arrays (computed in Python: key dates are read in one place only), so the
function is replaced: 0005's text with those arrays added.
"""

import importlib

from django.db import migrations, models

from aggregates.keydates import key_date

_0005 = importlib.import_module("aggregates.migrations.0005_register_function")

SIGNATURE_BEFORE = """    p_attrs jsonb[],
    p_all_or_nothing boolean"""
SIGNATURE_AFTER = """    p_attrs jsonb[],
    p_key_templates text[],
    p_key_shapes text[],
    p_key_ats timestamptz[],
    p_all_or_nothing boolean"""
INSERT_BEFORE = """                INSERT INTO "{aggregate}" ("domain_id", "key", "version", "counts",
                                           "created_at", "updated_at")
                    VALUES (v_domain_id, p_aggregates[i], 0, '{}', v_at, v_at)"""
INSERT_AFTER = """                INSERT INTO "{aggregate}" ("domain_id", "key", "version", "counts",
                                           "created_at", "updated_at",
                                           "key_template", "key_shape", "key_at")
                    VALUES (v_domain_id, p_aggregates[i], 0, '{}', v_at, v_at,
                            p_key_templates[i], p_key_shapes[i], p_key_ats[i])"""
assert SIGNATURE_BEFORE in _0005.FUNCTION and INSERT_BEFORE in _0005.FUNCTION
FUNCTION = _0005.FUNCTION.replace(SIGNATURE_BEFORE, SIGNATURE_AFTER).replace(
    INSERT_BEFORE, INSERT_AFTER
)
DROP = """
DROP FUNCTION IF EXISTS botlnek_register(
    text[], text[], text[], text[], jsonb[], jsonb[], text[], text[], timestamptz[],
    boolean
);
"""
BATCH = 2000


def fill(apps, schema_editor):
    Aggregate = apps.get_model("aggregates", "Aggregate")
    last = 0
    while True:
        rows = list(
            Aggregate.objects.filter(id__gt=last)
            .order_by("id")
            .values_list("id", "key")[:BATCH]
        )
        if not rows:
            return
        dated = []
        for pk, key in rows:
            found = key_date(key)
            if found is not None:
                dated.append(
                    Aggregate(
                        pk=pk,
                        key_template=found.template,
                        key_shape=found.shape,
                        key_at=found.at,
                    )
                )
        Aggregate.objects.bulk_update(dated, ["key_template", "key_shape", "key_at"])
        last = rows[-1][0]


def install(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    _0005.uninstall(apps, schema_editor)
    _0005.install_function(apps, schema_editor, FUNCTION)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(DROP, params=None)
    _0005.install(apps, schema_editor)


class Migration(migrations.Migration):
    dependencies = [
        ("aggregates", "0008_publish_scope"),
    ]

    operations = [
        migrations.AddField(
            model_name="aggregate",
            name="key_at",
            field=models.DateTimeField(editable=False, null=True),
        ),
        migrations.AddField(
            model_name="aggregate",
            name="key_shape",
            field=models.CharField(default="", editable=False, max_length=8),
        ),
        migrations.AddField(
            model_name="aggregate",
            name="key_template",
            field=models.CharField(default="", editable=False, max_length=200),
        ),
        migrations.AddIndex(
            model_name="aggregate",
            index=models.Index(
                fields=["domain", "key_template", "key_shape", "key_at"],
                name="aggregate_key_date_idx",
            ),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop),
        migrations.RunPython(install, uninstall),
    ]
