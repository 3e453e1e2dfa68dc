from django.apps import AppConfig


class FinopsConfig(AppConfig):
    name = "finops"
    verbose_name = "Data (sources, accounts, facts)"
