"""The data layer in the admin, for analysts: search and filters on every model."""

from django.contrib import admin

from finops.models import (
    Account,
    CurrencyRate,
    DataSource,
    Department,
    Entity,
    FinancialFact,
    OperationalFact,
    OperationalSeries,
    RefreshRun,
    Scenario,
)


@admin.register(Entity)
class EntityAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "parent", "currency", "ownership_pct")
    list_filter = ("currency",)
    search_fields = ("code", "name")
    autocomplete_fields = ("parent",)


@admin.register(Department)
class DepartmentAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "parent", "side")
    list_filter = ("side",)
    search_fields = ("code", "name")
    autocomplete_fields = ("parent",)


@admin.register(Scenario)
class ScenarioAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "kind")
    list_filter = ("kind",)
    search_fields = ("code", "name")


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "parent", "account_type", "time_behaviour", "operator", "unit")
    list_filter = ("account_type", "time_behaviour", "rollup_sign", "unit")
    search_fields = ("code", "name")
    autocomplete_fields = ("parent",)


@admin.register(OperationalSeries)
class OperationalSeriesAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "unit", "time_behaviour")
    list_filter = ("time_behaviour",)
    search_fields = ("code", "name", "description")


@admin.register(DataSource)
class DataSourceAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "kind", "is_active", "created_at")
    list_filter = ("kind", "is_active")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}


@admin.register(RefreshRun)
class RefreshRunAdmin(admin.ModelAdmin):
    list_display = (
        "pk",
        "source",
        "trigger",
        "status",
        "started_at",
        "finished_at",
        "rows_read",
        "rows_rejected",
    )
    list_filter = ("status", "trigger", "source")
    date_hierarchy = "started_at"
    list_select_related = ("source", "requested_by")
    readonly_fields = [field.name for field in RefreshRun._meta.fields] + ["steps", "warnings", "errors"]

    def has_add_permission(self, request):
        return False


class FactAdmin(admin.ModelAdmin):
    """Facts are written only by loads; the admin shows them read-only."""

    date_hierarchy = "period"
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(FinancialFact)
class FinancialFactAdmin(FactAdmin):
    list_display = ("period", "entity", "department", "scenario", "account", "amount", "source")
    list_filter = ("scenario", "source", "entity", "department")
    search_fields = ("account__code", "account__name", "entity__name")
    list_select_related = ("entity", "department", "scenario", "account", "source")


@admin.register(OperationalFact)
class OperationalFactAdmin(FactAdmin):
    list_display = ("date", "entity", "scenario", "series", "dimension", "value", "count", "source")
    list_filter = ("scenario", "source", "series", "entity")
    search_fields = ("series__code", "series__name", "dimension")
    list_select_related = ("entity", "scenario", "series", "source")


@admin.register(CurrencyRate)
class CurrencyRateAdmin(admin.ModelAdmin):
    list_display = ("currency", "period", "average_rate", "end_rate", "source")
    list_filter = ("currency", "source")
    date_hierarchy = "period"
