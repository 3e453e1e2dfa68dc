from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from finops.errors import ImportRejected
from kpis.definitions import (
    MAX_FILE_BYTES,
    DefinitionsRejected,
    export_yaml,
    import_yaml,
    install_library,
)
from kpis.target_files import MAX_BYTES as TARGET_MAX_BYTES
from kpis.target_files import import_targets


class Command(BaseCommand):
    help = "KPI definitions as code: export or import every measure and KPI as YAML, or install the library."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        export = sub.add_parser(
            "export", help="Write every measure and KPI definition to FILE (- for stdout)."
        )
        export.add_argument("file")
        imp = sub.add_parser("import", help="Create or update measures and KPIs from FILE (all or nothing).")
        imp.add_argument("file")
        lib = sub.add_parser("install", help="Create a dataset's measures and enable the standard KPIs.")
        lib.add_argument("dataset", help="demo or adventureworks")
        targets = sub.add_parser(
            "import-targets",
            help="Import targets from a CSV or XLSX file (kpi, period, value[, grain, entity]).",
        )
        targets.add_argument("file")

    def handle(self, *args, action: str, **options):
        if action == "import-targets":
            self._import_targets(Path(options["file"]))
            return
        try:
            if action == "export":
                text = export_yaml()
                if options["file"] == "-":
                    self.stdout.write(text, ending="")
                else:
                    Path(options["file"]).write_text(text, encoding="utf-8")
                    self.stdout.write(f"Wrote {options['file']}.")
                return
            if action == "import":
                path = Path(options["file"])
                if not path.is_file():
                    raise CommandError(f"No such file: {path}")
                if path.stat().st_size > MAX_FILE_BYTES:  # refused before it is read into memory
                    raise DefinitionsRejected(
                        [f"{path.name}: larger than {MAX_FILE_BYTES // 1024 // 1024} MB"]
                    )
                try:
                    text = path.read_text(encoding="utf-8")
                except UnicodeDecodeError as error:
                    raise CommandError(
                        f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"
                    ) from None
                report = import_yaml(text, name=path.name)
            else:
                report = install_library(options["dataset"])
        except DefinitionsRejected as rejected:
            raise CommandError(str(rejected)) from None
        self.stdout.write(
            f"Measures: {len(report.measures_created)} created, {len(report.measures_updated)} updated. "
            f"KPIs: {len(report.kpis_created)} created, {len(report.kpis_updated)} updated."
        )
        for skipped in report.skipped:
            self.stdout.write(f"skipped {skipped}")

    def _import_targets(self, path: Path) -> None:
        if not path.is_file():
            raise CommandError(f"No such file: {path}")
        if path.stat().st_size > TARGET_MAX_BYTES:
            raise CommandError(f"{path.name}: larger than {TARGET_MAX_BYTES // 2**20} MB")
        try:
            result = import_targets(path.read_bytes(), filename=path.name)
        except ImportRejected as rejected:
            raise CommandError(str(rejected)) from None
        self.stdout.write(
            f"Targets: {result.rows} in the file, {result.created} created, {result.updated} updated, "
            f"{result.unchanged} unchanged. They apply from the next refresh."
        )
