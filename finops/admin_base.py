"""What the admin classes of both apps share."""

from __future__ import annotations

from django.contrib import admin

from finops.loading import wait_for_readers


class WaitsForRefresh(admin.ModelAdmin):
    """Admin for a table a refresh reads under a SHARE lock: a delete waits for the refresh to
    commit before it cascades (``finops.loading.wait_for_readers``)."""

    def delete_model(self, request, obj):
        wait_for_readers(self.model)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        wait_for_readers(self.model)
        super().delete_queryset(request, queryset)
