"""The REST API's metric layer: KPI definitions, measures and the stored KPI values.

Read-only, like the pages: values are what the last complete refresh stored, never computed
here. Each list is read with a fixed number of queries, whatever its length.
"""

from __future__ import annotations

import re
from datetime import date

from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers
from rest_framework.exceptions import ValidationError

from finops.api import Pages
from finops.periods import GRAINS
from kpis.formatting import format_value
from kpis.models import KPI, KPIValue, Measure
from kpis.selectors import UnknownName, kpi_value_rows

MONTH = re.compile(r"^([0-9]{4})-([0-9]{2})(?:-([0-9]{2}))?$")
PAGE_PARAMETERS = {"page", "page_size", "format"}


class KPISerializer(serializers.ModelSerializer):
    owner_department = serializers.SlugRelatedField(slug_field="code", read_only=True, allow_null=True)

    class Meta:
        model = KPI
        fields = (
            "code",
            "name",
            "description",
            "convention",
            "owner_department",
            "unit",
            "direction",
            "formula",
            "formula_version",
            "decimals",
            "is_active",
            "is_library",
            "target_rule",
            "target_rule_pct",
            "green_tolerance_pct",
            "amber_tolerance_pct",
            "band_low",
            "band_high",
        )
        read_only_fields = fields


class MeasureSerializer(serializers.ModelSerializer):
    accounts = serializers.SlugRelatedField(slug_field="code", many=True, read_only=True)
    series = serializers.SlugRelatedField(slug_field="code", read_only=True, allow_null=True)
    department = serializers.SlugRelatedField(slug_field="code", read_only=True, allow_null=True)
    scenario = serializers.SlugRelatedField(slug_field="code", read_only=True, allow_null=True)

    class Meta:
        model = Measure
        fields = (
            "code",
            "name",
            "description",
            "kind",
            "accounts",
            "series",
            "department",
            "scenario",
            "time_behaviour",
            "unit",
            "multiplier",
        )
        read_only_fields = fields


class KPIValueSerializer(serializers.ModelSerializer):
    kpi = serializers.SlugRelatedField(slug_field="code", read_only=True)
    scenario = serializers.SlugRelatedField(slug_field="code", read_only=True)
    entity = serializers.SlugRelatedField(slug_field="code", read_only=True)
    formatted = serializers.SerializerMethodField(help_text="The value as the pages show it.")
    refresh_run = serializers.IntegerField(source="refresh_run_id", allow_null=True, read_only=True)

    class Meta:
        model = KPIValue
        fields = (
            "kpi",
            "scenario",
            "entity",
            "grain",
            "period",
            "value",
            "formatted",
            "target",
            "target_origin",
            "variance",
            "variance_pct",
            "status",
            "status_reason",
            "partial",
            "empty_reason",
            "formula_version",
            "inputs",
            "refresh_run",
        )
        read_only_fields = fields

    def get_formatted(self, value: KPIValue) -> str:
        return format_value(value.value, value.kpi.unit, value.kpi.decimals, value.entity.currency)


def month_start(text: str) -> date:
    """``2024-03`` or ``2024-03-01`` as the first day of that month (ValidationError if not)."""
    match = MONTH.match(text.strip())
    if match is None:
        raise ValidationError(f"{text!r} is not a month: write it as YYYY-MM, e.g. 2024-03.")
    year, month, day = int(match[1]), int(match[2]), match[3]
    if year < 1:
        raise ValidationError(f"{text!r}: there is no year 0.")
    if not 1 <= month <= 12:
        raise ValidationError(f"{text!r}: there is no month {month}.")
    if day is not None and int(day) != 1:
        raise ValidationError(f"{text!r}: periods start on the first of a month (YYYY-MM-01).")
    return date(year, month, 1)


class KPIValueFilters(serializers.Serializer):
    """The query parameters of /api/v1/kpi-values/."""

    kpi = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="KPI codes, comma-separated or repeated (default: every active KPI).",
    )
    grain = serializers.ChoiceField(choices=GRAINS, default="month")
    scenario = serializers.CharField(required=False, help_text="Scenario code or name (default: actual).")
    entity = serializers.CharField(
        required=False, help_text="Entity code or name (default: the top of the organisation)."
    )
    period_from = serializers.CharField(required=False, help_text="First period, YYYY-MM.")
    period_to = serializers.CharField(required=False, help_text="Last period, YYYY-MM.")
    status = serializers.ChoiceField(choices=KPIValue.Status.values, required=False)

    def validate_period_from(self, text: str) -> date:
        return month_start(text)

    def validate_period_to(self, text: str) -> date:
        return month_start(text)

    def validate(self, data: dict) -> dict:
        start, end = data.get("period_from"), data.get("period_to")
        if start and end and start > end:
            raise ValidationError({"period_to": [f"{end:%Y-%m} is before period_from, {start:%Y-%m}."]})
        return data


class KPIList(generics.ListAPIView):
    """KPI definitions, in the scorecard's order (inactive ones too: see ``is_active``)."""

    serializer_class = KPISerializer
    pagination_class = Pages
    queryset = KPI.objects.select_related("owner_department").order_by("sort_order", "code")


class KPIDetail(generics.RetrieveAPIView):
    """One KPI definition, by its code."""

    serializer_class = KPISerializer
    queryset = KPI.objects.select_related("owner_department")
    lookup_field = "code"


class MeasureList(generics.ListAPIView):
    """Measures: the named aggregations of the facts that KPI formulas read."""

    serializer_class = MeasureSerializer
    pagination_class = Pages
    queryset = (
        Measure.objects.select_related("series", "department", "scenario")
        .prefetch_related("accounts")
        .order_by("code")
    )


@extend_schema(parameters=[KPIValueFilters])
class KPIValueList(generics.ListAPIView):
    """Stored KPI values with target, variance, status and lineage, for one grain, scenario and
    entity: by KPI, then oldest period first."""

    serializer_class = KPIValueSerializer
    pagination_class = Pages

    def get_queryset(self):
        params = self.request.query_params
        unknown = sorted(set(params) - set(KPIValueFilters().fields) - PAGE_PARAMETERS)
        if unknown:
            known = ", ".join([*KPIValueFilters().fields, *sorted(PAGE_PARAMETERS)])
            raise ValidationError({name: [f"Unknown parameter. Known: {known}."] for name in unknown})
        repeated = sorted(name for name in params if name != "kpi" and len(params.getlist(name)) > 1)
        if repeated:
            raise ValidationError(
                {name: ["Give this parameter once (only kpi may repeat)."] for name in repeated}
            )
        filters = KPIValueFilters(data={**params.dict(), "kpi": ",".join(params.getlist("kpi"))})
        filters.is_valid(raise_exception=True)
        given = filters.validated_data
        codes = None
        if "kpi" in params:
            codes = [code.strip() for code in given.get("kpi", "").split(",") if code.strip()]
            if not codes:
                raise ValidationError(
                    {"kpi": ["Give one or more KPI codes, or leave kpi out for every active KPI."]}
                )
        try:
            return kpi_value_rows(
                codes=codes,
                grain=given["grain"],
                scenario=given.get("scenario"),
                entity=given.get("entity"),
                start=given.get("period_from"),
                end=given.get("period_to"),
                status=given.get("status"),
            )
        except UnknownName as error:
            raise ValidationError({error.what: [str(error)]}) from None
