"""What the web pages tell a user: choices in words, not repository paths; what to do on the page, not
command-line flags. The trigger form's help texts and option names (airtune.form, from spec's table),
the jobs page's and the wizard's words (webapp.i18n, create_templates.UI) and the pages as rendered;
the delete page when `airtune delete` (which the page runs) refuses a job with an active run."""

from __future__ import annotations

import importlib
import re

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient

from airtune import form
from airtune.spec import FIELDS
from airtune.webapp import create_templates, data, i18n

webapp = importlib.import_module("airtune.webapp.app")

# a repository path (configs/models.yaml, docs/form.md, src/...), a command-line flag, an airtune command
PATH = re.compile(r"\bconfigs/|\.ya?ml\b|\bdocs/|\.md\b|\bsrc/|\bexamples/|\.py\b")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
COMMAND = re.compile(r"\bairtune (delete|generate|run|validate|prepare|status|list|chat|evaluate|fetch-model|form-doc)\b")


def _bad_words(text: str) -> list[str]:
    return [m.group(0) for rx in (PATH, FLAG, COMMAND) for m in rx.finditer(text)]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_trigger_forms_help_names_no_file_and_no_flag(lang):
    for name, p in form.dag_params(lang).items():
        texts = [p.description or "", p.schema.get("description_md") or "", p.schema["title"],
                 *map(str, (p.schema.get("values_display") or {}).values())]
        for text in texts:
            assert not _bad_words(text), (name, text)


def test_the_catalog_fields_say_what_to_choose_in_words():
    help_en = {f.name: f.help("en") for f in FIELDS}
    assert "catalog" in help_en["base_model"] and "catalog" in help_en["dataset"] and "catalog" in help_en["location"]
    zh = {f.name: f.help("zh") for f in FIELDS}
    assert zh["base_model"].startswith("选择微调实验支持的模型") and "目录" in zh["location"]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_pages_words_tell_no_command_line(lang):
    for key in i18n.MESSAGES:
        assert not _bad_words(i18n.text(lang, key).replace("<code>", "").replace("</code>", "")), key
    for key, words in create_templates.UI[lang].items():
        assert not _bad_words(words), key
    for f in FIELDS:  # the wizard's help texts are the table's
        assert not _bad_words(f.help(lang)), f.name


@pytest.fixture
def client(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIRTUNE_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.delenv("AIRTUNE_FORM_LANG", raising=False)
    monkeypatch.setattr(webapp, "_requires", lambda method: Depends(lambda: None))
    return TestClient(webapp.create_app(), base_url="http://testserver")


def _visible(html: str) -> str:
    html = re.sub(r"<(style|script)\b.*?</\1>", "", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_wizard_page_tells_no_command_line(client, monkeypatch, lang):
    monkeypatch.setattr(data, "job_rows", lambda: [])
    for path in (f"/create?lang={lang}", "/jobs"):
        text = _visible(client.get(path, headers={"Accept-Language": lang}).text)
        assert not _bad_words(text), (path, _bad_words(text))


def _cli_refusal(monkeypatch, capsys) -> str:
    """What `airtune delete NAME --yes` (data.delete runs it) writes when the job has an active run."""
    from airtune import cli, jobs

    monkeypatch.setattr(jobs, "active_runs", lambda name: ["airtune_finetune / manual__1 (running)"])
    code = cli.main(["delete", "busy-job", "--yes"])
    err = capsys.readouterr().err
    assert code == 1 and "--force" in err, (code, err)  # the terminal's words
    return err


@pytest.mark.parametrize("lang, hint", [("en", "tick “cancel its active run first”"), ("zh", "勾选“先取消正在进行的运行”")])
def test_a_refused_delete_says_what_to_do_on_the_page(client, monkeypatch, capsys, lang, hint):
    err = _cli_refusal(monkeypatch, capsys)
    monkeypatch.setattr(data, "delete", lambda name, force: (1, "", err + "\n(exit 1 after 2 s)"))
    r = client.post("/jobs/busy-job/delete", data={"confirm": "busy-job"},
                    headers={"Accept-Language": lang, "Accept": "text/html"})
    assert r.status_code == 409
    shown = re.search(r'<p class="errors" id="delete-error">(.*?)</p>', r.text, re.S).group(1)
    assert "--force" not in shown and hint in shown.replace("&#34;", '"'), shown
    assert "nothing deleted" in shown  # the rest of the CLI's report stays
