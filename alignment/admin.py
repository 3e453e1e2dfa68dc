"""Goals, their KPIs and the driver links in the admin, with search and filters."""

from __future__ import annotations

from django.contrib import admin

from alignment.models import Goal, GoalKPI, KPIDriver
from finops.roles import is_analyst


def may_edit_goal(user, goal: Goal | None) -> bool:
    """Analysts edit every goal; a goal's owner edits that goal (its text, period, weights and
    KPI links) and nobody else's."""
    return is_analyst(user) or (goal is not None and goal.owner_id == user.pk)


class GoalKPIInline(admin.TabularInline):
    model = GoalKPI
    extra = 1
    autocomplete_fields = ("kpi",)
    fields = ("kpi", "role", "weight", "target", "sort_order")

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and (
            obj is None or may_edit_goal(request.user, obj)
        )

    def has_add_permission(self, request, obj=None):
        return super().has_add_permission(request, obj) and (obj is None or may_edit_goal(request.user, obj))

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and (
            obj is None or may_edit_goal(request.user, obj)
        )


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

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and (
            obj is None or may_edit_goal(request.user, obj)
        )

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and (
            obj is None or may_edit_goal(request.user, obj)
        )

    def has_add_permission(self, request):
        # New goals (and where they sit in the tree) are the analysts'.
        return super().has_add_permission(request) and is_analyst(request.user)


@admin.register(KPIDriver)
class KPIDriverAdmin(admin.ModelAdmin):
    list_display = ("driver", "outcome", "explanation")
    list_filter = ("outcome__owner_department", "driver__owner_department")
    search_fields = ("driver__name", "driver__code", "outcome__name", "outcome__code", "explanation")
    autocomplete_fields = ("driver", "outcome")
    list_select_related = ("driver", "outcome")

    # Which KPI drives which is a shared definition: analysts change it, others read it.
    def has_add_permission(self, request):
        return super().has_add_permission(request) and is_analyst(request.user)

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and is_analyst(request.user)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and is_analyst(request.user)
