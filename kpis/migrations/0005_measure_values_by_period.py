"""The measure values' natural key indexed by measure, grain and period before scenario and
entity: the engine's read of some measures over a range of periods is one index range."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('finops', '0006_financial_fact_one_index'),
        ('kpis', '0004_value_tables_fillfactor'),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='measurevalue',
            name='measurevalue_natural_key',
        ),
        migrations.AddConstraint(
            model_name='measurevalue',
            constraint=models.UniqueConstraint(fields=('measure', 'grain', 'period', 'scenario', 'entity'), name='measurevalue_natural_key'),
        ),
    ]
