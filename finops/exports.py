"""Cells for exported CSV and XLSX files that a spreadsheet will never run as a formula."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")


def safe_cell(value: object) -> object:
    """Text starting with a formula character gets a leading apostrophe (the OWASP advice);
    numbers, including negative ones written as text, are left as they are."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        Decimal(value)
    except InvalidOperation:
        return "'" + value
    return value
