"""The data layer in the admin, for analysts: search and filters on every model."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from finops.admin_base import WaitsForRefresh
from finops.api_auth import issue_token
from finops.errors import ImportRejected
from finops.models import (
    PERIOD_RULE_CHOICES,
    Account,
    ApiToken,
    CurrencyRate,
    DataSource,
    Department,
    Entity,
    FinancialFact,
    OperationalFact,
    OperationalSeries,
    RefreshRun,
    Scenario,
    SourceFile,
)
from finops.sources import files, mapping
from finops.sources import http as http_source
from finops.sources import sql as sql_source

MAPPED_KINDS = (DataSource.Kind.FILE, DataSource.Kind.SQL, DataSource.Kind.HTTP)


@admin.register(Entity)
class EntityAdmin(WaitsForRefresh):
    list_display = ("code", "name", "parent", "currency", "ownership_pct")
    list_filter = ("currency",)
    search_fields = ("code", "name")
    autocomplete_fields = ("parent",)


@admin.register(Department)
class DepartmentAdmin(WaitsForRefresh):
    list_display = ("code", "name", "parent", "side")
    list_filter = ("side",)
    search_fields = ("code", "name")
    autocomplete_fields = ("parent",)


@admin.register(Scenario)
class ScenarioAdmin(WaitsForRefresh):
    list_display = ("code", "name", "kind")
    list_filter = ("kind",)
    search_fields = ("code", "name")


@admin.register(Account)
class AccountAdmin(WaitsForRefresh):
    list_display = ("code", "name", "parent", "account_type", "time_behaviour", "operator", "unit")
    list_filter = ("account_type", "time_behaviour", "rollup_sign", "unit")
    search_fields = ("code", "name")
    autocomplete_fields = ("parent",)


@admin.register(OperationalSeries)
class OperationalSeriesAdmin(WaitsForRefresh):
    list_display = ("code", "name", "unit", "time_behaviour")
    list_filter = ("time_behaviour",)
    search_fields = ("code", "name", "description")


# --- data sources ----------------------------------------------------------------------------

CODE_TARGETS = ("entity", "department", "account", "series", "scenario", "dimension", "count")
FINANCIAL_ONLY = ("department", "account")
OPERATIONAL_ONLY = ("series", "dimension", "count")


def _optional_text(label: str) -> forms.CharField:
    return forms.CharField(required=False, label=label)


def _blank(choices):
    return [("", "—")] + list(choices)


class DataSourceForm(forms.ModelForm):
    """A data source; for a file source the config is edited as form fields (checked by
    ``finops.sources.files.validate_file_config``), for other kinds as JSON."""

    upload = forms.FileField(
        required=False,
        label="Upload a file",
        help_text="CSV or XLSX. It becomes the file this source loads at the next refresh "
        "(earlier uploads are kept below).",
    )
    path = forms.CharField(
        required=False,
        label="Or read from a path",
        help_text="A file inside the source files folder (FINOPS_SOURCE_FILES_DIR), e.g. ledger/2024.csv. "
        "When set, uploads are ignored.",
    )
    file_format = forms.ChoiceField(
        label="Format",
        choices=[("auto", "Automatic (by file name)"), ("csv", "CSV"), ("xlsx", "XLSX")],
        required=False,
    )
    delimiter = forms.ChoiceField(
        choices=[(k, f"{v} ({k})" if k != "\t" else v) for k, v in files.DELIMITERS.items()],
        required=False,
        help_text="CSV only.",
    )
    encoding = forms.CharField(
        required=False, initial="utf-8", help_text="CSV only: utf-8, latin-1, cp1252, ..."
    )
    header_row = forms.IntegerField(
        required=False,
        min_value=0,
        initial=1,
        help_text="The line (CSV) or row (XLSX) holding the column names; 0 when there is none.",
    )
    column_names = forms.CharField(
        required=False,
        label="Column names",
        help_text="Only when the header row is 0: the columns in order, separated by commas.",
        widget=forms.TextInput(attrs={"size": 60}),
    )
    sheet = forms.CharField(
        required=False, help_text="XLSX only: the sheet's name; empty for the first sheet."
    )
    sql_url = forms.CharField(
        required=False,
        label="Database URL",
        widget=forms.TextInput(attrs={"size": 70}),
        help_text="Without the password: postgresql://reader@db.example.com:5432/erp, "
        "mysql://reader@db.example.com/erp, or sqlite:///erp.db (a file in the source files folder).",
    )
    sql_password_env = forms.CharField(
        required=False,
        label="Password from environment variable",
        help_text="Its name, starting with FINOPS_SECRET_ (set on the web and worker machines).",
    )
    sql_password_file = forms.CharField(
        required=False,
        label="or from a secret file",
        help_text="A file in the secrets folder (FINOPS_SOURCE_SECRETS_DIR, /run/secrets by default).",
    )
    sql_query = forms.CharField(
        required=False,
        label="Query",
        widget=forms.Textarea(
            attrs={"rows": 6, "cols": 90, "class": "vLargeTextField", "spellcheck": "false"}
        ),
        help_text="One SELECT (or WITH ... SELECT) statement; it runs in a read-only transaction.",
    )
    sql_timeout_seconds = forms.IntegerField(
        required=False, min_value=1, initial=sql_source.DEFAULT_TIMEOUT, label="Timeout (seconds)"
    )
    http_url = forms.CharField(
        required=False,
        label="API URL",
        widget=forms.TextInput(attrs={"size": 70}),
        help_text="http:// or https://, fixed query parameters included (e.g. ?company=NW).",
    )
    http_auth_header = forms.CharField(
        required=False, label="Auth header", help_text="e.g. Authorization or X-Api-Key; empty: none."
    )
    http_auth_prefix = forms.CharField(
        required=False, strip=False, label="Value prefix", help_text="Put before the secret, e.g. 'Bearer '."
    )
    http_auth_env = forms.CharField(
        required=False,
        label="Header value from environment variable",
        help_text="Its name, starting with FINOPS_SECRET_.",
    )
    http_auth_file = forms.CharField(
        required=False, label="or from a secret file", help_text="A file in the secrets folder."
    )
    http_records_path = forms.CharField(
        required=False,
        label="Records path",
        help_text="Where the list of records is in the JSON, dotted (data.items); empty: the whole body.",
    )
    http_pagination = forms.ChoiceField(
        label="Pagination",
        required=False,
        choices=[
            (http_source.NONE, "None (one request)"),
            (http_source.PAGE, "Page number (until an empty page)"),
            (http_source.CURSOR, "Cursor (until no next cursor)"),
        ],
    )
    http_page_param = forms.CharField(required=False, initial="page", label="Page parameter")
    http_page_start = forms.IntegerField(required=False, min_value=0, initial=1, label="First page")
    http_cursor_param = forms.CharField(required=False, initial="cursor", label="Cursor parameter")
    http_cursor_path = forms.CharField(
        required=False,
        label="Next cursor path",
        help_text="Dotted path in the response, e.g. meta.next_cursor.",
    )
    http_timeout_seconds = forms.FloatField(
        required=False, min_value=0.1, initial=http_source.DEFAULT_TIMEOUT, label="Timeout (seconds)"
    )
    http_retries = forms.IntegerField(
        required=False,
        min_value=0,
        initial=http_source.DEFAULT_RETRIES,
        label="Retries",
        help_text="After a 5xx answer or a failed connection only, with growing waits.",
    )
    http_backoff_seconds = forms.FloatField(
        required=False, min_value=0, initial=1, label="First wait (seconds)"
    )
    http_max_pages = forms.IntegerField(
        required=False, min_value=1, initial=http_source.DEFAULT_MAX_PAGES, label="Max pages"
    )
    http_max_bytes = forms.IntegerField(
        required=False, min_value=1024, initial=http_source.DEFAULT_MAX_BYTES, label="Max bytes per response"
    )
    http_allow_internal = forms.BooleanField(
        required=False,
        label="Allow internal addresses",
        help_text="Only for an API inside your network: loopback, private and link-local addresses "
        "(such as 169.254.169.254) are refused otherwise.",
    )
    fact_kind = forms.ChoiceField(
        label="Facts",
        choices=_blank(
            [
                (mapping.FINANCIAL, "Financial (amounts on accounts)"),
                (mapping.OPERATIONAL, "Operational (series values and counts)"),
            ]
        ),
        required=False,
    )
    date_column = forms.CharField(
        required=False, help_text="A column of dates; the period rule gives the month."
    )
    period_column = forms.CharField(
        required=False, help_text="Or a column holding the month itself (YYYY-MM); map one of the two."
    )
    date_format = forms.CharField(
        required=False,
        initial="iso",
        help_text="iso (YYYY-MM-DD, periods YYYY-MM) or a pattern such as %d/%m/%Y or %m/%Y.",
    )
    period_rule = forms.ChoiceField(choices=PERIOD_RULE_CHOICES, required=False)
    decimal_separator = forms.ChoiceField(
        choices=[(".", "point (1234.56)"), (",", "comma (1234,56)")], required=False
    )
    thousands_separator = forms.ChoiceField(
        choices=[
            ("", "none"),
            (",", "comma (1,234)"),
            (".", "point (1.234)"),
            (" ", "space (1 234)"),
            ("'", "apostrophe (1'234)"),
        ],
        required=False,
    )
    amount_column = forms.CharField(required=False, label="Amount / value column")
    entity_column = _optional_text("Entity column")
    entity_value = _optional_text("or fixed value")
    department_column = _optional_text("Department column")
    department_value = _optional_text("or fixed value")
    account_column = _optional_text("Account column")
    account_value = _optional_text("or fixed value")
    series_column = _optional_text("Series column")
    series_value = _optional_text("or fixed value")
    scenario_column = _optional_text("Scenario column")
    scenario_value = _optional_text("or fixed value")
    dimension_column = _optional_text("Dimension column")
    dimension_value = _optional_text("or fixed value")
    count_column = _optional_text("Count column")
    count_value = _optional_text("or fixed count")
    snapshot = forms.BooleanField(
        required=False,
        label="The file holds every period",
        help_text="Then facts of this source in periods the file no longer has are deleted. Otherwise "
        "only the scenario-periods in the file are replaced.",
    )

    # problem path (finops.sources.files / sql / http / mapping) -> form field
    MAPPING_PROBLEM_FIELDS = (
        {
            "mapping.fact_kind": "fact_kind",
            "mapping.columns.date": "date_column",
            "mapping.columns.period": "period_column",
            "mapping.columns.amount": "amount_column",
            "mapping.columns.value": "amount_column",
            "mapping.date_format": "date_format",
            "mapping.period_rule": "period_rule",
            "mapping.decimal_separator": "decimal_separator",
            "mapping.thousands_separator": "thousands_separator",
            "mapping.snapshot": "snapshot",
        }
        | {f"mapping.columns.{name}": f"{name}_column" for name in CODE_TARGETS}
        | {f"mapping.constants.{name}": f"{name}_value" for name in CODE_TARGETS}
    )
    PROBLEM_FIELDS = {
        "path": "path",
        "format": "file_format",
        "delimiter": "delimiter",
        "encoding": "encoding",
        "header_row": "header_row",
        "columns": "column_names",
        "sheet": "sheet",
    } | MAPPING_PROBLEM_FIELDS
    SQL_KEYS = ("url", "password_env", "password_file", "query", "timeout_seconds")
    HTTP_KEYS = (
        "url",
        "auth_header",
        "auth_prefix",
        "auth_env",
        "auth_file",
        "records_path",
        "pagination",
        "page_param",
        "page_start",
        "cursor_param",
        "cursor_path",
        "timeout_seconds",
        "retries",
        "backoff_seconds",
        "max_pages",
        "max_bytes",
        "allow_internal",
    )
    SQL_PROBLEM_FIELDS = {key: f"sql_{key}" for key in SQL_KEYS} | MAPPING_PROBLEM_FIELDS
    HTTP_PROBLEM_FIELDS = {key: f"http_{key}" for key in HTTP_KEYS} | MAPPING_PROBLEM_FIELDS

    class Meta:
        model = DataSource
        fields = ("name", "slug", "kind", "is_active", "config")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        kind = self.instance.kind if self.instance.pk else ""
        config = self.instance.config if kind in MAPPED_KINDS else {}
        config = config if isinstance(config, dict) else {}
        rules = config.get("mapping") if isinstance(config.get("mapping"), dict) else {}
        columns = rules.get("columns") if isinstance(rules.get("columns"), dict) else {}
        constants = rules.get("constants") if isinstance(rules.get("constants"), dict) else {}
        initial = {
            "path": config.get("path", ""),
            "file_format": config.get("format", "auto"),
            "delimiter": config.get("delimiter", ","),
            "encoding": config.get("encoding", "utf-8"),
            "header_row": config.get("header_row", 1),
            "column_names": ", ".join(config.get("columns") or []),
            "sheet": config.get("sheet", ""),
            "fact_kind": rules.get("fact_kind", mapping.FINANCIAL),
            "date_column": columns.get("date", ""),
            "period_column": columns.get("period", ""),
            "date_format": rules.get("date_format", "iso"),
            "period_rule": rules.get("period_rule", "calendar_month"),
            "decimal_separator": rules.get("decimal_separator", "."),
            "thousands_separator": rules.get("thousands_separator", ""),
            "amount_column": columns.get("amount") or columns.get("value") or "",
            "snapshot": rules.get("snapshot", False),
        }
        for name in CODE_TARGETS:
            initial[f"{name}_column"] = columns.get(name, "")
            default = "actual" if name == "scenario" and not config else ""
            initial[f"{name}_value"] = constants.get(name, default)
        if kind == DataSource.Kind.SQL:
            initial |= {f"sql_{key}": config[key] for key in self.SQL_KEYS if key in config}
        if kind == DataSource.Kind.HTTP:
            initial |= {f"http_{key}": config[key] for key in self.HTTP_KEYS if key in config}
        for name, value in initial.items():
            if name in self.fields:
                self.fields[name].initial = value

    def mapping_config(self) -> dict:
        """The ``mapping`` JSON the mapping fields describe (shared by every kind)."""
        data = self.cleaned_data
        kind = data.get("fact_kind") or ""
        columns, constants = {}, {}
        if data.get("date_column"):
            columns["date"] = data["date_column"].strip()
        if data.get("period_column"):
            columns["period"] = data["period_column"].strip()
        if data.get("amount_column"):
            columns["value" if kind == mapping.OPERATIONAL else "amount"] = data["amount_column"].strip()
        for name in CODE_TARGETS:
            if kind == mapping.FINANCIAL and name in OPERATIONAL_ONLY:
                continue
            if kind == mapping.OPERATIONAL and name in FINANCIAL_ONLY:
                continue
            column, value = (
                (data.get(f"{name}_column") or "").strip(),
                (data.get(f"{name}_value") or "").strip(),
            )
            if column:
                columns[name] = column
            if value:
                constants[name] = value
        return {
            "fact_kind": kind,
            "columns": columns,
            "constants": constants,
            "date_format": (data.get("date_format") or "iso").strip(),
            "decimal_separator": data.get("decimal_separator") or ".",
            "thousands_separator": data.get("thousands_separator") or "",
            "period_rule": data.get("period_rule") or "calendar_month",
            "snapshot": bool(data.get("snapshot")),
        }

    def file_config(self) -> dict:
        """The config JSON the file fields describe."""
        data = self.cleaned_data
        header_row = data.get("header_row")
        return {
            "path": (data.get("path") or "").strip(),
            "format": data.get("file_format") or "auto",
            "delimiter": data.get("delimiter") or ",",
            "encoding": (data.get("encoding") or "utf-8").strip(),
            "header_row": 1 if header_row is None else header_row,
            "columns": [name.strip() for name in (data.get("column_names") or "").split(",") if name.strip()],
            "sheet": (data.get("sheet") or "").strip(),
            "mapping": self.mapping_config(),
        }

    def sql_config(self) -> dict:
        """The config JSON the SQL fields describe."""
        data = self.cleaned_data
        timeout = data.get("sql_timeout_seconds")
        return {
            "url": (data.get("sql_url") or "").strip(),
            "password_env": (data.get("sql_password_env") or "").strip(),
            "password_file": (data.get("sql_password_file") or "").strip(),
            "query": (data.get("sql_query") or "").strip(),
            "timeout_seconds": sql_source.DEFAULT_TIMEOUT if timeout is None else timeout,
            "mapping": self.mapping_config(),
        }

    def http_config(self) -> dict:
        """The config JSON the HTTP fields describe (empty numbers take their defaults)."""
        data = self.cleaned_data
        config = {
            key: (data.get(f"http_{key}") or "").strip()
            for key in (
                "url",
                "auth_header",
                "auth_env",
                "auth_file",
                "records_path",
                "page_param",
                "cursor_param",
                "cursor_path",
            )
        }
        config["auth_prefix"] = data.get("http_auth_prefix") or ""
        config["pagination"] = data.get("http_pagination") or http_source.NONE
        defaults = {
            "page_start": 1,
            "timeout_seconds": http_source.DEFAULT_TIMEOUT,
            "retries": http_source.DEFAULT_RETRIES,
            "backoff_seconds": 1.0,
            "max_pages": http_source.DEFAULT_MAX_PAGES,
            "max_bytes": http_source.DEFAULT_MAX_BYTES,
        }
        for key, default in defaults.items():
            value = data.get(f"http_{key}")
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            config[key] = default if value is None else value
        config["page_param"] = config["page_param"] or "page"
        config["cursor_param"] = config["cursor_param"] or "cursor"
        config["allow_internal"] = bool(data.get("http_allow_internal"))
        config["mapping"] = self.mapping_config()
        return config

    def _put_problems(self, invalid: mapping.ConfigInvalid, fields: dict) -> None:
        for where, message in invalid.problems:
            name = fields.get(where)
            if name in self.fields:
                self.add_error(name, message)
            else:
                self.add_error(None, f"{where}: {message}")

    def clean(self):
        data = super().clean()
        kind = data.get("kind")
        if kind not in MAPPED_KINDS:
            return data
        if self.instance.pk and self.instance.kind != kind:
            label = DataSource.Kind(kind).label
            self.add_error(
                "kind",
                f"A source cannot change its kind to {label}: add a new data source of that kind.",
            )
            return data
        if kind == DataSource.Kind.SQL:
            return self._clean_remote(
                data, self.sql_config(), sql_source.validate_sql_config, self.SQL_PROBLEM_FIELDS
            )
        if kind == DataSource.Kind.HTTP:
            return self._clean_remote(
                data, self.http_config(), http_source.validate_http_config, self.HTTP_PROBLEM_FIELDS
            )
        config = self.file_config()
        try:
            files.validate_file_config(config)
        except mapping.ConfigInvalid as invalid:
            self._put_problems(invalid, self.PROBLEM_FIELDS)
        upload = data.get("upload")
        if upload:
            try:
                files.check_size(upload.name, upload.size)
            except ImportRejected as rejected:
                self.add_error("upload", rejected.errors[0].reason)
        elif not config["path"] and not (self.instance.pk and self.instance.files.exists()):
            self.add_error("upload", "Upload a file, or give a path to read it from.")
        self.instance.config = config
        data["config"] = config
        return data

    def _clean_remote(self, data: dict, config: dict, validate, fields: dict) -> dict:
        try:
            validate(config)
        except mapping.ConfigInvalid as invalid:
            self._put_problems(invalid, fields)
        self.instance.config = config
        data["config"] = config
        return data


class SourceFileInline(admin.TabularInline):
    model = SourceFile
    extra = 0
    fields = ("original_name", "size_shown", "sha256", "uploaded_at", "uploaded_by")
    readonly_fields = fields
    verbose_name = "uploaded file"
    verbose_name_plural = "Uploaded files (the newest is loaded unless a path is set)"

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="Size")
    def size_shown(self, obj: SourceFile) -> str:
        return files.human_size(obj.size)


@admin.register(DataSource)
class DataSourceAdmin(WaitsForRefresh):
    form = DataSourceForm
    list_display = ("name", "slug", "kind", "is_active", "created_at")
    list_filter = ("kind", "is_active")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    change_form_template = "admin/finops/datasource/change_form.html"

    FILE_FIELDSET = (
        "File",
        {
            "fields": (
                "upload",
                "path",
                ("file_format", "sheet"),
                ("delimiter", "encoding"),
                ("header_row", "column_names"),
            ),
            "description": "Where the file comes from and how to read it.",
        },
    )
    SQL_FIELDSET = (
        "SQL database",
        {
            "fields": (
                "sql_url",
                ("sql_password_env", "sql_password_file"),
                "sql_query",
                "sql_timeout_seconds",
            ),
            "description": "One read-only query; its result's columns are mapped below. The password is "
            "read when the source runs and is never stored here.",
        },
    )
    HTTP_FIELDSET = (
        "HTTP JSON API",
        {
            "fields": (
                "http_url",
                ("http_auth_header", "http_auth_prefix"),
                ("http_auth_env", "http_auth_file"),
                "http_records_path",
                "http_pagination",
                ("http_page_param", "http_page_start"),
                ("http_cursor_param", "http_cursor_path"),
                ("http_timeout_seconds", "http_retries", "http_backoff_seconds"),
                ("http_max_pages", "http_max_bytes"),
                "http_allow_internal",
            ),
            "description": "Records are mapped below by dotted JSON paths (amount.net, org.code). The auth "
            "header's value is read when the source runs and is never stored here.",
        },
    )
    MAPPING_FIELDSETS = (
        (
            "Mapping onto facts",
            {
                "fields": (
                    "fact_kind",
                    ("date_column", "period_column"),
                    ("date_format", "period_rule"),
                    ("amount_column", "decimal_separator", "thousands_separator"),
                ),
                "description": "File: column names as in the header; SQL: the query's column names (letter "
                "case does not matter); HTTP: dotted JSON paths in each record, such as amount.net.",
            },
        ),
        (
            "Codes: from a column, or one fixed value for every row",
            {
                "fields": (
                    ("entity_column", "entity_value"),
                    ("department_column", "department_value"),
                    ("account_column", "account_value"),
                    ("series_column", "series_value"),
                    ("scenario_column", "scenario_value"),
                    ("dimension_column", "dimension_value"),
                    ("count_column", "count_value"),
                    "snapshot",
                ),
                "description": "Financial facts need entity, department, account and scenario; operational "
                "facts need entity, series and scenario (count defaults to 1, dimension to empty). "
                "Codes must exist already (Entities, Departments, Accounts, Operational series, Scenarios).",
            },
        ),
    )

    KIND_FIELDSETS = {
        DataSource.Kind.FILE: FILE_FIELDSET,
        DataSource.Kind.SQL: SQL_FIELDSET,
        DataSource.Kind.HTTP: HTTP_FIELDSET,
    }

    def get_fieldsets(self, request, obj=None):
        main = (None, {"fields": ("name", "slug", "kind", "is_active")})
        if obj is not None and obj.kind in MAPPED_KINDS:
            return (main, self.KIND_FIELDSETS[obj.kind], *self.MAPPING_FIELDSETS)
        if obj is not None:
            return (main, ("Settings", {"fields": ("config",)}))
        config = ("Settings for other kinds (JSON)", {"fields": ("config",), "classes": ("collapse",)})
        kinds = tuple(
            (f"{title} (kind {DataSource.Kind(kind).label})", options)
            for kind, (title, options) in self.KIND_FIELDSETS.items()
        )
        mapped = tuple(
            (f"{title} (kinds File, SQL and HTTP)", options) for title, options in self.MAPPING_FIELDSETS
        )
        return (main, *kinds, *mapped, config)

    def get_inlines(self, request, obj):
        return [SourceFileInline] if obj is not None and obj.kind == DataSource.Kind.FILE else []

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        upload = form.cleaned_data.get("upload")
        if upload and obj.kind == DataSource.Kind.FILE:
            stored = files.store_upload(obj, upload, user=request.user)
            self.message_user(
                request,
                f"Stored {stored.original_name} ({files.human_size(stored.size)}); use “Test connection / "
                "preview” to check it before the next refresh.",
                messages.INFO,
            )

    def get_urls(self):
        own = [
            path(
                "<int:pk>/preview/",
                self.admin_site.admin_view(self.preview_view),
                name="finops_datasource_preview",
            )
        ]
        return own + super().get_urls()

    def preview_view(self, request, pk: int):
        """Test connection / preview: the first rows as they would be loaded and the file's problems."""
        source = get_object_or_404(DataSource, pk=pk)
        if not self.has_view_permission(request, source):
            raise PermissionDenied
        previews = {
            DataSource.Kind.FILE: (files.preview, "file"),
            DataSource.Kind.SQL: (sql_source.preview, "query result"),
            DataSource.Kind.HTTP: (http_source.preview, "API response"),
        }
        if source.kind not in previews:
            self.message_user(
                request, "A preview is available for file, SQL and HTTP sources.", messages.WARNING
            )
            return redirect("admin:finops_datasource_change", pk)
        make, noun = previews[source.kind]
        result = make(source)
        context = {
            **self.admin_site.each_context(request),
            "noun": noun,
            "title": f"Preview: {source.name}",
            "opts": self.model._meta,
            "original": source,
            "preview": result,
            "table": _preview_table(result),
        }
        return TemplateResponse(request, "admin/finops/datasource/preview.html", context)


def _preview_table(result: files.Preview) -> dict:
    """Headings and cells of the preview's first rows: each mapped field parsed, or its raw
    cell and the reason it cannot be loaded."""
    if not result.config:
        return {"headings": [], "rows": []}
    columns = result.columns
    time_field = result.mapping.time_field
    headings = [(name.capitalize(), column) for name, column in columns]
    headings.insert(1, ("Period", "by the rule" if time_field == "date" else "from the column"))
    rows = []
    for row in result.rows:
        reasons = {}
        for problem in row.problems:
            reasons.setdefault((problem.column or "").lower(), problem.reason)
        cells = []
        for name, column in columns:
            reason = reasons.get(column.lower())
            if reason:
                shown, css = row.raw.get(name), "bad"
            elif name in ("date", "period"):
                shown, css = (row.day.isoformat() if row.day else None), "nowrap"
            elif name in ("amount", "value"):
                shown, css = row.value, "num"
            elif name == "count":
                shown, css = row.count, "num"
            elif name == "dimension":
                shown, css = row.dimension, ""
            else:
                shown, css = row.codes.get(name, row.raw.get(name)), ""
            cells.append({"value": shown, "reason": reason, "css": css, "field": name})
        period = {
            "value": row.period.strftime("%Y-%m") if row.period else None,
            "reason": None,
            "css": "nowrap",
            "field": "period",
        }
        cells.insert(1, period)
        general = [problem.reason for problem in row.problems if not problem.column]
        rows.append({"number": row.number, "ok": row.ok, "cells": cells, "general": general})
    return {"headings": headings, "rows": rows}


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
    """Facts are written only by loads (which keep the ledger totals and the coverage with
    them); the admin shows them read-only. To remove a source's facts, load it again."""

    date_hierarchy = "period"
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
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


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """API tokens. A new token's key is shown once, on the page after "Save" (it is not
    stored). Only a superuser makes tokens for other users or sees theirs: a token acts as its
    user, so anyone else makes tokens for themselves only. Delete a token to revoke it."""

    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "expires_at")
    list_select_related = ("user",)
    search_fields = ("name", "user__username", "prefix")
    readonly_fields = ("prefix", "created_at", "last_used_at")

    def get_queryset(self, request):
        tokens = super().get_queryset(request)
        return tokens if request.user.is_superuser else tokens.filter(user=request.user)

    def get_fields(self, request, obj=None):
        if obj is not None:  # the user and the key never change; revoke and make another
            return ("name", "user", "prefix", "expires_at", "created_at", "last_used_at")
        return ("name", "user", "expires_at") if request.user.is_superuser else ("name", "expires_at")

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        # Only a superuser moves an expiry: the token's user can't extend their own.
        return (*self.readonly_fields, "user", *(() if request.user.is_superuser else ("expires_at",)))

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if "expires_at" in form.base_fields:
            form.base_fields["expires_at"].validators = [_in_the_future]
        return form

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        user = obj.user if request.user.is_superuser and obj.user_id else request.user
        token, key = issue_token(user, obj.name, expires_at=obj.expires_at)
        obj.pk, obj.user, obj.prefix = token.pk, user, token.prefix
        obj._state.adding = False
        request.new_api_key = key  # shown by response_add, once; never stored

    def response_add(self, request, obj, post_url_continue=None):
        key = getattr(request, "new_api_key", None)
        if key is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "token": obj,
            "key": key,
            "api_root": request.build_absolute_uri("/api/v1/"),
            "title": "Your new API token",
        }
        response = TemplateResponse(request, "admin/finops/apitoken/issued.html", context)
        response["Cache-Control"] = "no-store"
        return response


def _in_the_future(moment) -> None:
    if moment is not None and moment <= timezone.now():
        raise ValidationError("The expiry is already past: leave it empty, or pick a later date.")
