"""An aggregate may exist before its first version: a rule's expected key
(rules/expect.py) that nobody posted to yet has version 0. Its first version
then dates it (`created_at` becomes that version's time, as for an aggregate
made by the version) and counts it among the domain's aggregates — on
PostgreSQL, botlnek_register() is replaced: 0009's text with both changes, and
an insert that waits for the rules engine making the same aggregate (the
engine does not take the domain's lock) and then takes the engine's.
"""

import importlib

from django.db import migrations

_0005 = importlib.import_module("aggregates.migrations.0005_register_function")
_0009 = importlib.import_module("aggregates.migrations.0009_aggregate_key_dates")

COUNT_BEFORE = """                    RETURNING "id" INTO v_aggregate_id;
                v_version := 0;
                v_counts := '{}';
                dom_added[d] := dom_added[d] + 1;"""
COUNT_AFTER = """                    ON CONFLICT ("domain_id", "key") DO NOTHING
                    RETURNING "id" INTO v_aggregate_id;
                v_version := 0;
                v_counts := '{}';
                IF v_aggregate_id IS NULL THEN
                    -- Made meanwhile by the rules engine (an expected key, with
                    -- no versions): the conflict waited for its commit.
                    SELECT ag."id", ag."version", ag."counts"
                        INTO v_aggregate_id, v_version, v_counts
                        FROM "{aggregate}" ag
                        WHERE ag."domain_id" = v_domain_id
                            AND ag."key" = p_aggregates[i];
                END IF;"""
VERSION_BEFORE = """        agg_versions[a] := agg_versions[a] + 1;
"""
VERSION_AFTER = """        agg_versions[a] := agg_versions[a] + 1;
        IF agg_versions[a] = 1 THEN  -- made here, or expected with no versions
            dom_added[d] := dom_added[d] + 1;
        END IF;
"""
UPDATE_BEFORE = """        SET "version" = t.version, "counts" = t.counts, "updated_at" = v_at"""
UPDATE_AFTER = """        SET "version" = t.version, "counts" = t.counts, "updated_at" = v_at,
            "created_at" = CASE WHEN ag."version" = 0 THEN v_at
                                ELSE ag."created_at" END"""
for before in (COUNT_BEFORE, VERSION_BEFORE, UPDATE_BEFORE):
    assert _0009.FUNCTION.count(before) == 1, before
FUNCTION = (
    _0009.FUNCTION.replace(COUNT_BEFORE, COUNT_AFTER)
    .replace(VERSION_BEFORE, VERSION_AFTER)
    .replace(UPDATE_BEFORE, UPDATE_AFTER)
)


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        _0005.install_function(apps, schema_editor, FUNCTION)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        _0005.install_function(apps, schema_editor, _0009.FUNCTION)


class Migration(migrations.Migration):
    dependencies = [
        ("aggregates", "0012_rule_expect"),
    ]

    operations = [
        migrations.RunPython(install, uninstall),
    ]
