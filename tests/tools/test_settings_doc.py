"""docs/operating.md's settings table is the one `python -m tools.settings_doc` generates
from `server.settings.Settings`, so a setting added, renamed or re-defaulted cannot be
left undocumented."""

from __future__ import annotations

from pathlib import Path

from server.settings import Settings
from tools import settings_doc


def test_the_settings_page_is_up_to_date() -> None:
    page = settings_doc.PAGE.read_text()
    assert settings_doc.render(page) == page, "run: python -m tools.settings_doc"
    assert settings_doc.main(["--check"]) == 0


def test_every_field_has_a_row_with_its_variable_flag_default_and_description() -> None:
    rows = {line.split(" | ")[0].strip("| `"): line for line in settings_doc.table().splitlines()[2:]}
    assert set(rows) == {f"UNCLIP_{name.upper()}" for name in Settings.model_fields}
    for name, field in Settings.model_fields.items():
        row = rows[f"UNCLIP_{name.upper()}"]
        assert f"`--{name.replace('_', '-')}`" in row
        assert field.description and " ".join(field.description.split()) in row
    assert "| `UNCLIP_PORT` | `--port` | `8000` |" in settings_doc.table()
    assert "| `UNCLIP_DEFAULT_DEADLINE_S` | `--default-deadline-s` | `600` |" in settings_doc.table()
    assert "| `UNCLIP_REDIS_URL` | `--redis-url` | empty |" in settings_doc.table()


def test_check_fails_on_a_stale_page(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(f"# S\n\n{settings_doc.BEGIN}\n| old |\n{settings_doc.END}\n\nafter\n")
    assert settings_doc.main(["--check", "--page", str(page)]) == 1
    assert settings_doc.main(["--page", str(page)]) == 0
    assert settings_doc.main(["--check", "--page", str(page)]) == 0
    assert page.read_text().endswith(f"{settings_doc.END}\n\nafter\n")
