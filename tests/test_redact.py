"""No secret on a page: redaction of secret keys, credential-looking values and URL passwords."""

from __future__ import annotations

from airtune import redact
from airtune.resolve import validate_mapping
from airtune.spec import SpecError

TOKEN = "hf_" + "A1b2C3d4E5f6G7h8I9j0KlMnOpQr"


def test_values_keys_and_urls():
    assert redact.text(f"extra_args.hub_token: {TOKEN!r} is bad") == "extra_args.hub_token: '***' is bad"
    assert redact.value("plain", "hub_token") == "***" and redact.value("plain", "learning_rate") == "plain"
    assert redact.value({"api_key": "x", "weight_decay": 0.1}) == {"api_key": "***", "weight_decay": 0.1}
    assert redact.url("https://alice:s3cret@mlflow.example:5000/x") == "https://mlflow.example:5000/x"
    assert "s3cret" not in redact.text("see https://alice:s3cret@mlflow.example/")
    for secret in ("sk-" + "a" * 24, "ghp_" + "b" * 30, "Bearer abcdefghijkl", "AKIA" + "X" * 16):
        assert secret not in redact.text(f"value {secret} here"), secret


def test_a_refused_secret_is_not_in_the_message():
    try:
        validate_mapping({"name": "j", "base_model": "tiny-llama-dev", "dataset": ["identity"],
                          "extra_args": {"hub_token": TOKEN, "push_to_hub": True}})
    except SpecError as exc:
        message = str(exc)
    else:
        raise AssertionError("hub_token in extra_args was accepted")
    assert "hub_token" in message and TOKEN not in message


def test_the_mlflow_link_drops_credentials(monkeypatch):
    from airtune import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://bob:hunter2@mlflow.internal:5000")
    monkeypatch.delenv("AIRTUNE_MLFLOW_UI_URL", raising=False)
    assert "hunter2" not in tracking.ui_url() and "bob" not in tracking.ui_url()
    assert "hunter2" not in tracking.run_url("1", "abc")


def test_a_retraining_file_with_a_token_keeps_it_out_of_its_errors(tmp_path):
    from airtune import retrain

    path = tmp_path / "leaky.yaml"
    path.write_text(f"name: leaky\nbase_model: tiny-llama-dev\ndataset: [identity]\nschedule: '@daily'\n"
                    f"extra_args: {{hub_token: {TOKEN}}}\n")
    job = retrain.load_file(path)
    assert job.errors and not any(TOKEN in e for e in job.errors) and TOKEN not in job.problem()
