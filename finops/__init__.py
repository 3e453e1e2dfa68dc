"""FinOps Review: project package (settings, urls, Celery app) and the data layer."""

from finops.celery import app as celery_app

__all__ = ("celery_app",)
