"""Room on each page of the value tables for a value rewritten by the next refresh.

A refresh rewrites the values a changed month reaches in place. PostgreSQL can then keep
the new row version on the same page as the old one and leave the indexes alone (a
heap-only tuple update), when the page has room: a fill factor of 80 leaves a fifth of each
page for them. Other databases have no such setting.
"""

from django.db import migrations

TABLES = ("kpis_measurevalue", "kpis_kpivalue")


def set_fillfactor(apps, schema_editor, value: int | None = 80) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in TABLES:
        setting = f"SET (fillfactor = {value})" if value else "RESET (fillfactor)"
        schema_editor.execute(f"ALTER TABLE {table} {setting}")


def reset_fillfactor(apps, schema_editor) -> None:
    set_fillfactor(apps, schema_editor, None)


class Migration(migrations.Migration):
    dependencies = [("kpis", "0003_engine_summaries")]

    operations = [migrations.RunPython(set_fillfactor, reset_fillfactor)]
