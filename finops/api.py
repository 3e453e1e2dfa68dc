"""The REST API's data layer: the organisation (entities, departments, scenarios) and the
refresh runs, plus what every endpoint shares (pagination). Read-only; see docs/api.md."""

from __future__ import annotations

from django.db import models
from rest_framework import generics, serializers
from rest_framework.pagination import PageNumberPagination

from finops.models import Department, Entity, RefreshRun, Scenario


class Pages(PageNumberPagination):
    """``?page=N`` of ``page_size`` rows (default 500, at most 5,000), with ``count``, ``next``
    and ``previous``."""

    page_size = 500
    page_size_query_param = "page_size"
    max_page_size = 5000


class EntitySerializer(serializers.ModelSerializer):
    parent = serializers.SlugRelatedField(slug_field="code", read_only=True, allow_null=True)

    class Meta:
        model = Entity
        fields = ("code", "name", "currency", "parent")
        read_only_fields = fields


class DepartmentSerializer(serializers.ModelSerializer):
    parent = serializers.SlugRelatedField(slug_field="code", read_only=True, allow_null=True)

    class Meta:
        model = Department
        fields = ("code", "name", "side", "parent")
        read_only_fields = fields


class ScenarioSerializer(serializers.ModelSerializer):
    class Meta:
        model = Scenario
        fields = ("code", "name", "kind")
        read_only_fields = fields


class RefreshRunSerializer(serializers.ModelSerializer):
    source = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    warnings = serializers.IntegerField(source="warning_count", read_only=True, help_text="Warnings stored.")
    errors = serializers.IntegerField(
        source="error_count",
        read_only=True,
        help_text="Errors stored: at most 1,000 rejected rows per source (rows_rejected counts every one).",
    )

    class Meta:
        model = RefreshRun
        fields = (
            "id",
            "status",
            "trigger",
            "source",
            "started_at",
            "finished_at",
            "rows_read",
            "rows_inserted",
            "rows_updated",
            "rows_deleted",
            "rows_rejected",
            "warnings",
            "errors",
        )
        read_only_fields = fields


class RefreshRunDetailSerializer(RefreshRunSerializer):
    warnings = serializers.ListField(child=serializers.DictField(), read_only=True)
    errors = serializers.ListField(
        child=serializers.DictField(),
        read_only=True,
        help_text="Each rejected row: source, file, row, column, value and message.",
    )
    steps = serializers.ListField(
        child=serializers.DictField(),
        read_only=True,
        help_text="Per source, then the recompute: figures and timings.",
    )

    class Meta(RefreshRunSerializer.Meta):
        fields = (*RefreshRunSerializer.Meta.fields, "steps")


class EntityList(generics.ListAPIView):
    """Entities (companies and groups), each with its parent: the organisation tree."""

    serializer_class = EntitySerializer
    pagination_class = Pages
    queryset = Entity.objects.select_related("parent").order_by("code")


class DepartmentList(generics.ListAPIView):
    """Departments and cost centres, each with its side (finance, operations) and parent."""

    serializer_class = DepartmentSerializer
    pagination_class = Pages
    queryset = Department.objects.select_related("parent").order_by("code")


class ScenarioList(generics.ListAPIView):
    """Scenarios: actual, budget, forecast and any other."""

    serializer_class = ScenarioSerializer
    pagination_class = Pages
    queryset = Scenario.objects.order_by("code")


class JSONArrayLength(models.Func):
    """The length of a JSON array column, counted by the database (the list never loads the
    runs' steps, warnings and errors)."""

    function = "jsonb_array_length"
    output_field = models.IntegerField()

    def as_sqlite(self, compiler, connection, **extra):
        return super().as_sql(compiler, connection, function="json_array_length", **extra)


def counted(runs: models.QuerySet) -> models.QuerySet:
    return runs.annotate(warning_count=JSONArrayLength("warnings"), error_count=JSONArrayLength("errors"))


class RefreshRunList(generics.ListAPIView):
    """Refresh runs, newest first, with their figures (counts of warnings and errors)."""

    serializer_class = RefreshRunSerializer
    pagination_class = Pages
    queryset = counted(
        RefreshRun.objects.select_related("source").defer("steps", "warnings", "errors")
    ).order_by("-started_at", "-pk")


class RefreshRunDetail(generics.RetrieveAPIView):
    """One refresh run with its steps, warnings and errors (each rejected row's source, row,
    column, value and reason)."""

    serializer_class = RefreshRunDetailSerializer
    queryset = counted(RefreshRun.objects.select_related("source"))
