"""The one markdown table and page layout every report and Prefect artifact uses."""

from __future__ import annotations

import pytest

from align_core.markdown import markdown_report, markdown_table


def test_a_table_escapes_pipes_and_flattens_line_breaks_in_cells():
    table = markdown_table(["name", "value"], [("a|b", 1), ("two\nlines", None)])
    assert table == "| name | value |\n|---|---|\n| a\\|b | 1 |\n| two lines | None |"


def test_right_aligned_columns_get_a_colon_in_the_separator():
    assert markdown_table(["status", "rows"], [], right_aligned={1}).splitlines()[1] == "|---|---:|"


def test_a_row_with_the_wrong_number_of_cells_is_refused():
    with pytest.raises(ValueError, match=r"table row \['x'\] has 1 cells; the headers \['a', 'b'\] have 2"):
        markdown_table(["a", "b"], [("x",)])


def test_a_report_is_heading_bullets_then_tables_separated_by_blank_lines():
    report = markdown_report("Run `abc`", ["steps: 3", "model: `m`"], ["| a |\n|---|", "| b |\n|---|"], level=2)
    assert report == "## Run `abc`\n\n- steps: 3\n- model: `m`\n\n| a |\n|---|\n\n| b |\n|---|\n"
