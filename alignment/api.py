"""The REST API's alignment layer: shared goals and the KPIs that measure them."""

from __future__ import annotations

from django.db import models
from rest_framework import generics, serializers

from alignment.models import Goal, GoalKPI
from finops.api import Pages


class GoalKPISerializer(serializers.ModelSerializer):
    kpi = serializers.SlugRelatedField(slug_field="code", read_only=True)

    class Meta:
        model = GoalKPI
        fields = ("kpi", "role", "weight", "target")
        read_only_fields = fields


class GoalSerializer(serializers.ModelSerializer):
    parent = serializers.SlugRelatedField(slug_field="code", read_only=True, allow_null=True)
    department = serializers.SlugRelatedField(slug_field="code", read_only=True, allow_null=True)
    kpis = GoalKPISerializer(source="links", many=True, read_only=True)

    class Meta:
        model = Goal
        fields = (
            "code",
            "title",
            "description",
            "parent",
            "department",
            "period_start",
            "period_end",
            "weight",
            "kpis",
        )
        read_only_fields = fields


class GoalList(generics.ListAPIView):
    """Shared goals, each with its parent goal, owning department and the KPIs linked to it
    (their role: a financial outcome or an operational driver)."""

    serializer_class = GoalSerializer
    pagination_class = Pages

    def get_queryset(self):
        links = GoalKPI.objects.select_related("kpi").order_by("sort_order", "kpi__code")
        return (
            Goal.objects.select_related("parent", "department")
            .prefetch_related(models.Prefetch("links", queryset=links))
            .order_by("sort_order", "code")
        )
