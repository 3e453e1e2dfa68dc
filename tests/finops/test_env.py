import pytest

from finops.env import envbool, envint, envlist, envstr

NAME = "FINOPS_TEST_VARIABLE"


@pytest.fixture(autouse=True)
def _unset(monkeypatch):
    monkeypatch.delenv(NAME, raising=False)


def test_envstr_reads_the_value_or_the_default(monkeypatch):
    assert envstr(NAME) == ""
    assert envstr(NAME, "fallback") == "fallback"
    monkeypatch.setenv(NAME, "value")
    assert envstr(NAME, "fallback") == "value"


def test_envstr_keeps_an_empty_value(monkeypatch):
    monkeypatch.setenv(NAME, "")
    assert envstr(NAME, "fallback") == ""


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "On", " true "])
def test_envbool_reads_true(monkeypatch, raw):
    monkeypatch.setenv(NAME, raw)
    assert envbool(NAME, default=False) is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "off", ""])
def test_envbool_reads_false(monkeypatch, raw):
    monkeypatch.setenv(NAME, raw)
    assert envbool(NAME, default=True) is False


def test_envbool_uses_the_default_when_unset():
    assert envbool(NAME, default=True) is True
    assert envbool(NAME, default=False) is False


def test_envbool_rejects_anything_else(monkeypatch):
    monkeypatch.setenv(NAME, "maybe")
    with pytest.raises(ValueError, match=f"{NAME}='maybe' is not a boolean"):
        envbool(NAME, default=False)


def test_envint_reads_an_integer(monkeypatch):
    monkeypatch.setenv(NAME, "42")
    assert envint(NAME, 7) == 42
    monkeypatch.setenv(NAME, "-3")
    assert envint(NAME, 7) == -3


@pytest.mark.parametrize("raw", [None, "", "  "])
def test_envint_uses_the_default_when_unset_or_blank(monkeypatch, raw):
    if raw is not None:
        monkeypatch.setenv(NAME, raw)
    assert envint(NAME, 7) == 7


@pytest.mark.parametrize("raw", ["seven", "1.5", "0x10"])
def test_envint_rejects_a_non_integer(monkeypatch, raw):
    monkeypatch.setenv(NAME, raw)
    with pytest.raises(ValueError, match="is not an integer"):
        envint(NAME, 7)


def test_envlist_splits_on_commas_and_drops_blanks(monkeypatch):
    monkeypatch.setenv(NAME, " a.example.com, ,b.example.com ,")
    assert envlist(NAME) == ["a.example.com", "b.example.com"]


def test_envlist_uses_the_default_when_unset(monkeypatch):
    assert envlist(NAME) == []
    assert envlist(NAME, "x,y") == ["x", "y"]
    monkeypatch.setenv(NAME, "")
    assert envlist(NAME, "x,y") == []
