import pytest

from finops.exports import safe_cell


@pytest.mark.parametrize("text", ["=SUM(A1)", "+cmd", "-2+3", "@import", "\t=1", '=HYPERLINK("x")'])
def test_it_neutralises_text_a_spreadsheet_would_run(text):
    assert safe_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["-100", "-0.047619", "12.5", "plain", "", None, 42, 3.5])
def test_it_leaves_numbers_and_plain_text_alone(value):
    assert safe_cell(value) == value
