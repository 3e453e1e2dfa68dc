"""Goals, their KPIs and the driver links in the admin, with search and filters."""

from __future__ import annotations

from django.contrib import admin

from alignment.models import Goal, GoalKPI, KPIDriver


class GoalKPIInline(admin.TabularInline):
    model = GoalKPI
    extra = 1
    autocomplete_fields = ("kpi",)
    fields = ("kpi", "role", "weight", "target", "sort_order")


@admin.register(Goal)
class GoalAdmin(admin.ModelAdmin):
    list_display = ("title", "code", "parent", "department", "owner", "period_start", "period_end", "weight")
    list_filter = ("department", "period_start", ("parent", admin.EmptyFieldListFilter))
    search_fields = ("code", "title", "description", "links__kpi__name", "links__kpi__code")
    autocomplete_fields = ("parent", "department", "owner")
    list_select_related = ("parent", "department", "owner")
    inlines = [GoalKPIInline]

    def save_model(self, request, obj, form, change):
        obj.full_clean()
        super().save_model(request, obj, form, change)


@admin.register(KPIDriver)
class KPIDriverAdmin(admin.ModelAdmin):
    list_display = ("driver", "outcome", "explanation")
    list_filter = ("outcome__owner_department", "driver__owner_department")
    search_fields = ("driver__name", "driver__code", "outcome__name", "outcome__code", "explanation")
    autocomplete_fields = ("driver", "outcome")
    list_select_related = ("driver", "outcome")
