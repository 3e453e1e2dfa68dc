from django.apps import AppConfig
from django.core import checks


class FinopsConfig(AppConfig):
    name = "finops"
    verbose_name = "Data (sources, accounts, facts)"

    def ready(self):
        from finops.checks import check_vendor_assets

        checks.register(check_vendor_assets, checks.Tags.staticfiles)
