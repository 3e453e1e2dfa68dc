"""KPI definitions in the admin: a formula is checked when saved (refused with the position of
the problem), and each KPI shows its change history."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import FieldDoesNotExist, PermissionDenied
from django.db import models
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html, format_html_join
from django.utils.text import capfirst

from finops.admin_base import WaitsForRefresh
from finops.errors import ImportRejected
from kpis.formula import FormulaError
from kpis.models import KPI, KPIChange, KPIValue, Measure, MeasureValue, Target
from kpis.services import kpi_formula_check, kpi_save
from kpis.target_files import MAX_BYTES as TARGET_MAX_BYTES
from kpis.target_files import import_targets


@admin.register(Measure)
class MeasureAdmin(WaitsForRefresh):
    list_display = (
        "code",
        "name",
        "kind",
        "account_list",
        "series",
        "department",
        "scenario",
        "time_behaviour",
    )
    list_filter = ("kind", "time_behaviour", "unit")
    search_fields = ("code", "name", "description", "accounts__name", "accounts__code", "series__name")
    autocomplete_fields = ("accounts", "series", "department")
    list_select_related = ("series", "department", "scenario")

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("accounts")

    @admin.display(description="Accounts")
    def account_list(self, measure: Measure) -> str:
        return ", ".join(f"{a.code} {a.name}" for a in measure.accounts.all()) or "—"

    def save_model(self, request, obj, form, change):
        obj.full_clean()
        super().save_model(request, obj, form, change)


class KPIForm(forms.ModelForm):
    class Meta:
        model = KPI
        fields = [f.name for f in KPI._meta.fields if f.name not in ("id", "formula_version")]
        widgets = {"formula": forms.Textarea(attrs={"rows": 3, "cols": 80, "spellcheck": "false"})}

    def clean(self):
        cleaned = super().clean()
        code, text = cleaned.get("code"), cleaned.get("formula")
        if code and text:
            try:
                kpi_formula_check(code=code, formula_text=text, exclude_pk=self.instance.pk)
            except FormulaError as error:
                self.add_error("formula", _formula_message(text, error))
        if cleaned.get("direction") == KPI.Direction.BAND and (
            cleaned.get("band_low") is None or cleaned.get("band_high") is None
        ):
            self.add_error("band_low", "A KPI that must stay within a band needs its low and high bounds.")
        return cleaned


def _formula_message(text: str, error: FormulaError) -> str:
    position = getattr(error, "position", None)
    if position is None:
        return str(error)
    pointer = text.replace("\n", " ")[:200]
    return f"{error} — {pointer[:position]}⟶{pointer[position:]}"


class KPIChangeInline(admin.TabularInline):
    model = KPIChange
    extra = 0
    can_delete = False
    fields = ("changed_at", "changed_by", "formula_version", "what_changed")
    readonly_fields = fields
    verbose_name_plural = "Change history"

    def has_add_permission(self, request, obj=None):
        return False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)  # an inline is made for each request
        self._names: dict[tuple[type, object], str] = {}  # related objects' names, looked up once

    @admin.display(description="What changed")
    def what_changed(self, change: KPIChange):
        """Each field by its label, with its old and new value as the form shows them (a
        choice's label, a department's or user's name)."""
        return format_html(
            "<dl class='kpi-changes'>{}</dl>",
            format_html_join(
                "",
                "<dt>{}</dt><dd><del>{}</del> → <ins>{}</ins></dd>",
                (
                    (_label(name), self._shown(name, old), self._shown(name, new))
                    for name, (old, new) in change.changes.items()
                ),
            ),
        )

    def _shown(self, name: str, value) -> str:
        field = _field(name)
        if value is None:
            return "—"
        if field is None:
            return str(value)
        if field.is_relation:  # a department or user: its name (a query for each, once per page)
            key = (field.related_model, value)
            if key not in self._names:
                found = field.related_model._default_manager.filter(pk=value).first()
                self._names[key] = str(found) if found is not None else f"#{value} (deleted)"
            return self._names[key]
        if field.choices:
            return str(dict(field.flatchoices).get(value, value))
        return str(value)


def _field(name: str) -> models.Field | None:
    """The KPI field a recorded change names (``owner_department_id`` is ``owner_department``)."""
    try:
        return KPI._meta.get_field(name.removesuffix("_id"))
    except FieldDoesNotExist:
        return None


def _label(name: str) -> str:
    field = _field(name)
    return capfirst(field.verbose_name) if field is not None else name


class TargetInline(admin.TabularInline):
    model = Target
    extra = 0
    fields = ("grain", "period", "entity", "value", "origin")
    autocomplete_fields = ("entity",)


@admin.register(KPI)
class KPIAdmin(WaitsForRefresh):
    form = KPIForm
    list_display = (
        "code",
        "name",
        "unit",
        "direction",
        "owner_department",
        "formula",
        "formula_version",
        "is_active",
    )
    list_filter = ("unit", "direction", "owner_department", "is_active", "is_library", "target_rule")
    search_fields = ("code", "name", "description", "formula")
    autocomplete_fields = ("owner_department",)
    list_select_related = ("owner_department",)
    readonly_fields = ("formula_version",)
    inlines = [TargetInline, KPIChangeInline]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "code",
                    "name",
                    "description",
                    "convention",
                    "owner_department",
                    "owner",
                    "is_active",
                )
            },
        ),
        ("Formula", {"fields": ("formula", "formula_version", "unit", "decimals")}),
        (
            "Target and status",
            {
                "fields": (
                    "direction",
                    "target_rule",
                    "target_rule_pct",
                    "green_tolerance_pct",
                    "amber_tolerance_pct",
                    ("band_low", "band_high"),
                )
            },
        ),
        ("Library", {"fields": ("is_library", "sort_order"), "classes": ("collapse",)}),
    )

    def save_model(self, request, obj, form, change):
        kpi_save(kpi=obj, user=request.user)


class TargetFileForm(forms.Form):
    file = forms.FileField(help_text="CSV or XLSX, at most 20 MB.")


@admin.register(Target)
class TargetAdmin(admin.ModelAdmin):
    list_display = ("kpi", "grain", "period", "entity", "value", "origin")
    list_filter = ("grain", "origin", "kpi")
    search_fields = ("kpi__code", "kpi__name")
    autocomplete_fields = ("kpi", "entity")
    date_hierarchy = "period"
    list_select_related = ("kpi", "entity")

    def get_urls(self):
        own = [path("import/", self.admin_site.admin_view(self.import_view), name="kpis_target_import")]
        return own + super().get_urls()

    def import_view(self, request):
        """Upload a CSV or XLSX of targets; a rejected file lists every bad row and column."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = TargetFileForm(request.POST or None, request.FILES or None)
        errors = []
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            if upload.size > TARGET_MAX_BYTES:
                form.add_error("file", f"The file is larger than {TARGET_MAX_BYTES // 2**20} MB.")
            else:
                try:
                    result = import_targets(upload.read(), filename=upload.name)
                except ImportRejected as rejected:
                    errors = rejected.errors
                else:
                    self.message_user(
                        request,
                        f"{upload.name}: {result.created} targets created, {result.updated} updated, "
                        f"{result.unchanged} unchanged. They apply from the next refresh.",
                        messages.SUCCESS,
                    )
                    return redirect("admin:kpis_target_changelist")
        context = {**self.admin_site.each_context(request), "form": form, "errors": errors, "title": "Import"}
        return TemplateResponse(request, "admin/kpis/target/import.html", context)


class ReadOnlyValues(admin.ModelAdmin):
    """Computed values: shown for checking, never edited by hand."""

    show_full_result_count = False
    date_hierarchy = "period"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # the engine keeps what it knows of them (kpis.engine._Summary) with them


@admin.register(KPIValue)
class KPIValueAdmin(ReadOnlyValues):
    list_display = (
        "kpi",
        "scenario",
        "entity",
        "grain",
        "period",
        "value",
        "target",
        "status",
        "formula_version",
    )
    list_filter = ("grain", "status", "scenario", "kpi")
    list_select_related = ("kpi", "scenario", "entity")
    search_fields = ("kpi__code",)


@admin.register(MeasureValue)
class MeasureValueAdmin(ReadOnlyValues):
    list_display = ("measure", "scenario", "entity", "grain", "period", "value", "note")
    list_filter = ("grain", "scenario", "measure")
    list_select_related = ("measure", "scenario", "entity")
    search_fields = ("measure__code",)
