"""botlnek_register(): the PostgreSQL write path in one statement.

The domain lock, version and position assignment, the inserts and the counter
updates run inside the server, so a domain's lock is held for server time only,
never across a network round trip. aggregates/store/write.py calls it and documents
the contract; the SQLite write path (Python, same file) decides the same way.

Each item is one source. Items are taken in order. With p_all_or_nothing the first
item that fails raises (SQLSTATE BL404: its domain does not exist; BL409: the same
keys already hold different attrs), and the statement writes nothing; DETAIL is
"<0-based index> <version of the existing source>". Without it, a failing item
answers its outcome and leaves no trace, and the others are written: that is how
single posts taken together in one transaction (group commit) stay independent.

Answers one row per item, in order: outcome ('created', 'existing',
'unknown_domain', 'conflict'), and the version's number, position and time (of the
existing version for 'existing' and 'conflict').

A migration freezes the text: a later change to the function is a new migration.
"""

from django.db import migrations

FUNCTION = """
CREATE OR REPLACE FUNCTION botlnek_register(
    p_domains text[],
    p_aggregates text[],
    p_collections text[],
    p_keys text[],
    p_key_values jsonb[],
    p_attrs jsonb[],
    p_all_or_nothing boolean
) RETURNS TABLE (outcome text, number integer, "position" bigint, at timestamptz)
LANGUAGE plpgsql AS $fn$
DECLARE
    -- The domains and aggregates touched, with their counters as this call moves
    -- them; written back once at the end instead of one UPDATE per item.
    dom_keys text[] := '{}';
    dom_ids bigint[] := '{}';
    dom_positions bigint[] := '{}';
    dom_added bigint[] := '{}';
    agg_names text[] := '{}';
    agg_ids bigint[] := '{}';
    agg_versions integer[] := '{}';
    agg_counts jsonb[] := '{}';
    agg_touched boolean[] := '{}';
    d integer;
    a integer;
    v_domain_id bigint;
    v_aggregate_id bigint;
    v_version integer;
    v_counts jsonb;
    v_attrs jsonb;
    v_version_id bigint;
    v_position bigint;
    v_at timestamptz;
    v_name text;
    v_collection text;
BEGIN
    -- Every writer locks its domains in key order: no deadlocks.
    FOR v_domain_id, v_name, v_position IN
        SELECT "id", "key", "latest_position" FROM "{domain}"
        WHERE "key" = ANY (p_domains) ORDER BY "key" FOR UPDATE
    LOOP
        dom_keys := dom_keys || v_name;
        dom_ids := dom_ids || v_domain_id;
        dom_positions := dom_positions || v_position;
        dom_added := dom_added || 0::bigint;
    END LOOP;
    -- Read under the lock: commit order, position order and time order agree.
    v_at := clock_timestamp();

    FOR i IN 1 .. coalesce(cardinality(p_domains), 0) LOOP
        d := array_position(dom_keys, p_domains[i]);
        IF d IS NULL THEN
            IF p_all_or_nothing THEN
                RAISE EXCEPTION 'domain % does not exist', p_domains[i]
                    USING ERRCODE = 'BL404', DETAIL = (i - 1)::text || ' 0';
            END IF;
            outcome := 'unknown_domain'; number := NULL; "position" := NULL;
            at := NULL;
            RETURN NEXT;
            CONTINUE;
        END IF;
        v_domain_id := dom_ids[d];
        v_collection := p_collections[i];

        v_name := v_domain_id::text || '/' || p_aggregates[i];
        a := array_position(agg_names, v_name);
        IF a IS NULL THEN
            SELECT ag."id", ag."version", ag."counts"
                INTO v_aggregate_id, v_version, v_counts
                FROM "{aggregate}" ag
                WHERE ag."domain_id" = v_domain_id AND ag."key" = p_aggregates[i];
            IF NOT FOUND THEN
                -- A new aggregate's first item cannot fail: it is made here.
                INSERT INTO "{aggregate}" ("domain_id", "key", "version", "counts",
                                           "created_at", "updated_at")
                    VALUES (v_domain_id, p_aggregates[i], 0, '{}', v_at, v_at)
                    RETURNING "id" INTO v_aggregate_id;
                v_version := 0;
                v_counts := '{}';
                dom_added[d] := dom_added[d] + 1;
            END IF;
            agg_names := agg_names || v_name;
            agg_ids := agg_ids || v_aggregate_id;
            agg_versions := agg_versions || v_version;
            agg_counts := agg_counts || v_counts;
            agg_touched := agg_touched || false;
            a := cardinality(agg_names);
        END IF;
        v_aggregate_id := agg_ids[a];

        -- Sources written earlier in this call are in the table already.
        SELECT s."attrs", vn."number", vn."position", vn."at"
            INTO v_attrs, number, "position", at
            FROM "{source}" s JOIN "{version}" vn ON vn."id" = s."version_id"
            WHERE s."aggregate_id" = v_aggregate_id AND s."key" = p_keys[i]
                AND s."collection" = v_collection;
        IF FOUND THEN
            IF v_attrs = p_attrs[i] THEN
                outcome := 'existing';
            ELSIF p_all_or_nothing THEN
                RAISE EXCEPTION 'conflicting attrs'
                    USING ERRCODE = 'BL409', DETAIL = (i - 1)::text || ' ' || number;
            ELSE
                outcome := 'conflict';
            END IF;
            RETURN NEXT;
            CONTINUE;
        END IF;

        dom_positions[d] := dom_positions[d] + 1;
        agg_versions[a] := agg_versions[a] + 1;
        agg_counts[a] := jsonb_set(
            agg_counts[a], ARRAY[v_collection],
            to_jsonb(coalesce((agg_counts[a] ->> v_collection)::bigint, 0) + 1)
        );
        agg_touched[a] := true;
        INSERT INTO "{version}" ("aggregate_id", "domain_id", "number", "position",
                                 "counts", "at")
            VALUES (v_aggregate_id, v_domain_id, agg_versions[a], dom_positions[d],
                    agg_counts[a], v_at)
            RETURNING "id" INTO v_version_id;
        INSERT INTO "{source}" ("version_id", "aggregate_id", "collection", "key",
                                "keys", "attrs")
            VALUES (v_version_id, v_aggregate_id, v_collection, p_keys[i],
                    p_key_values[i], p_attrs[i]);
        outcome := 'created';
        number := agg_versions[a];
        "position" := dom_positions[d];
        at := v_at;
        RETURN NEXT;
    END LOOP;

    UPDATE "{aggregate}" ag
        SET "version" = t.version, "counts" = t.counts, "updated_at" = v_at
        FROM unnest(agg_ids, agg_versions, agg_counts, agg_touched)
            AS t (id, version, counts, touched)
        WHERE ag."id" = t.id AND t.touched;
    UPDATE "{domain}" dm
        SET "latest_position" = t.position,
            "aggregate_count" = dm."aggregate_count" + t.added
        FROM unnest(dom_ids, dom_positions, dom_added) AS t (id, position, added)
        WHERE dm."id" = t.id
            AND (t.position <> dm."latest_position" OR t.added <> 0);
END
$fn$;
"""

DROP = """
DROP FUNCTION IF EXISTS botlnek_register(
    text[], text[], text[], text[], jsonb[], jsonb[], boolean
);
"""


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        install_function(apps, schema_editor, FUNCTION)


def install_function(apps, schema_editor, function: str) -> None:
    """Create `function` with the app's table names in it (a later migration
    that replaces the function installs its own text with this too)."""
    tables = {
        name: apps.get_model("aggregates", name)._meta.db_table
        for name in ("domain", "aggregate", "version", "source")
    }
    sql = function
    for name, table in tables.items():
        sql = sql.replace("{" + name + "}", table)
    schema_editor.execute(sql, params=None)  # None: its % signs are not parameters


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("aggregates", "0004_webhooks"),
    ]

    operations = [
        migrations.RunPython(install, uninstall),
    ]
