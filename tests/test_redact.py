"""Credentials in URIs are masked wherever htl-ray writes or prints them."""

from htl_ray.config import dump_config, load_config
from htl_ray.redact import redact, redact_tree


def test_userinfo_passwords_and_secret_query_values_are_masked():
    assert redact("https://ann:s3cr3t@mlflow.lab:5000/") == "https://ann:***@mlflow.lab:5000/"
    assert redact("http://h/?token=abc&x=1&API_KEY=k") == "http://h/?token=***&x=1&API_KEY=***"
    assert redact("sqlite:////data/mlflow.db") == "sqlite:////data/mlflow.db"   # untouched
    assert redact("http://ann@h/") == "http://ann@h/"                           # no password
    assert redact_tree({"a": ["s3://k:v@b/x", 3], "b": None}) == {"a": ["s3://k:***@b/x", 3],
                                                                    "b": None}


def test_the_config_copy_logged_to_mlflow_holds_no_password(tmp_path):
    cfg = load_config(None, ["tracking.uri=https://ann:s3cr3t@mlflow.lab:5000"])
    dump_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "s3cr3t" not in text and "https://ann:***@mlflow.lab:5000" in text
    assert cfg.tracking.uri == "https://ann:s3cr3t@mlflow.lab:5000"      # the run still uses it
