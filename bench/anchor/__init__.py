"""The plain-Django anchor the ingest benchmark measures our posts against.

Two views as a Django user would write them, served by the same daphne process on
the same database as the product: `hello` answers JSON and nothing else; `insert`
stores the posted source with the ORM in a transaction. bench/ingest.py starts the
server with DJANGO_SETTINGS_MODULE=bench.anchor.settings, which adds this app and
its two URLs to the product's settings and changes nothing else.
"""
