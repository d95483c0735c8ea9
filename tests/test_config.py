"""Configuration errors a new user makes: each one stops at load, naming the key and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cardq import config
from cardq.config import ConfigError, check_credentials, from_mapping, load
from tests import helpers


def hook_bot(**extra: Any) -> dict[str, Any]:
    return {
        "backend": "feishu_webhook",
        "credentials": {"token": {"env": "T_HOOK_TOKEN"}},
        **extra,
    }


def error_of(data: dict[str, Any], env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        from_mapping(data, env={} if env is None else env)
    return caught.value


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"http": {"timeout_s": -1}}, "http.timeout_s"),
        ({"http": {"timeout_s": 0}}, "http.timeout_s"),
        ({"http": {"max_connections": 0}}, "http.max_connections"),
        ({"bots": {"b": hook_bot(timeout_s=-5)}}, "bots.b.timeout_s"),
        (
            {"bots": {"b": hook_bot(limits={"destination": [{"limit": 0, "seconds": 1}]})}},
            "bots.b.limits.destination[0].limit",
        ),
        (
            {"bots": {"b": hook_bot(limits={"app": [{"limit": 5, "seconds": 1},
                                                     {"limit": -1, "seconds": 60}]})}},
            "bots.b.limits.app[1].limit",
        ),
        (
            {"bots": {"b": hook_bot(limits={"destination": [{"limit": 5, "seconds": 0}]})}},
            "bots.b.limits.destination[0].seconds",
        ),
        ({"delivery": {"max_age_s": 0}}, "delivery.max_age_s"),
        ({"delivery": {"backoff_base_s": -0.5}}, "delivery.backoff_base_s"),
        ({"delivery": {"backoff_base_s": 5, "backoff_cap_s": 1}}, "delivery.backoff_cap_s"),
        ({"delivery": {"commit_interval_s": 0}}, "delivery.commit_interval_s"),
        ({"delivery": {"drain_grace_s": -1}}, "delivery.drain_grace_s"),
        ({"idempotency": {"ttl_s": 0}}, "idempotency.ttl_s"),
        ({"idempotency": {"subject_ttl_s": 0}}, "idempotency.subject_ttl_s"),
        ({"idempotency": {"subject_ttl_s": 15 * 86_400}}, "idempotency.subject_ttl_s"),
        ({"kafka": {"session_timeout_ms": 0}}, "kafka.session_timeout_ms"),
        ({"observability": {"port": 70000}}, "observability.port"),
    ],
)  # fmt: skip
def test_out_of_range_numbers_are_refused_by_key(data: dict[str, Any], key: str) -> None:
    error = error_of(data)
    assert error.key == key
    assert str(error).startswith(f"configuration error at {key}: must ")


def test_an_empty_limit_list_still_means_no_limit() -> None:
    settings = from_mapping({"bots": {"b": hook_bot(limits={"destination": []})}}, env={})
    assert settings.bots["b"].limits.destination == ()


def test_a_misspelt_credential_is_reported_as_unknown_with_a_suggestion() -> None:
    data = {"bots": {"b": {"backend": "feishu_webhook", "credentials": {"tokn": {"env": "X"}}}}}
    error = error_of(data)
    assert error.key == "bots.b.credentials.tokn"
    assert "unknown credential for feishu_webhook; did you mean token?" in error.reason
    assert "required" not in error.reason


def test_a_misspelt_key_gets_a_suggestion() -> None:
    error = error_of({"delivery": {"max_atempts": 3}})
    assert error.key == "delivery.max_atempts"
    assert error.reason.startswith("unknown key; did you mean max_attempts? (known: ")


def test_a_key_nothing_resembles_gets_the_list_only() -> None:
    error = error_of({"delivery": {"colour": "blue"}})
    assert "did you mean" not in error.reason
    assert "(known: backoff_base_s, " in error.reason


def test_a_bad_value_from_the_environment_names_the_variable() -> None:
    env = {"CARDQ_DELIVERY__MAX_ATTEMPTS": "many"}
    error = error_of({}, env)
    assert error.key == "delivery.max_attempts"
    assert str(error) == (
        "configuration error at delivery.max_attempts "
        "(from environment variable CARDQ_DELIVERY__MAX_ATTEMPTS): must be an integer; got 'many'"
    )


def test_a_range_error_from_the_environment_names_the_variable() -> None:
    error = error_of({}, {"CARDQ_HTTP__TIMEOUT_S": "-1"})
    assert "CARDQ_HTTP__TIMEOUT_S" in str(error)
    assert error.key == "http.timeout_s"


def test_an_unknown_key_from_the_environment_names_the_variable() -> None:
    error = error_of({}, {"CARDQ_DELIVERY__MAX_ATEMPTS": "3"})
    assert "CARDQ_DELIVERY__MAX_ATEMPTS" in str(error)
    assert "did you mean max_attempts?" in str(error)


def test_an_environment_value_that_is_not_yaml_names_the_variable() -> None:
    error = error_of({}, {"CARDQ_KAFKA__BOOTSTRAP_SERVERS": "[unclosed"})
    assert error.key == "kafka.bootstrap_servers"
    assert "CARDQ_KAFKA__BOOTSTRAP_SERVERS" in str(error)
    assert "<unicode string>" not in str(error)


def test_a_bot_key_from_the_environment_names_the_variable() -> None:
    data = {"bots": {"ops-app": hook_bot()}}
    error = error_of(data, {"CARDQ_BOTS__OPS_APP__BASE_URL": "ftp://x"})
    assert error.key == "bots.ops-app.base_url"
    assert "CARDQ_BOTS__OPS_APP__BASE_URL" in str(error)


def test_an_error_in_the_file_does_not_blame_an_unrelated_variable() -> None:
    error = error_of({"http": {"timeout_s": -1}}, {"CARDQ_HTTP__MAX_CONNECTIONS": "5"})
    assert error.source is None
    assert "CARDQ_" not in str(error)


def test_a_yaml_syntax_error_cites_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text("kafka:\n  bootstrap_servers: a:9092\n  group_id: [cardq\n")
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    message = str(caught.value)
    assert message.startswith(f"configuration error at {path}: not valid YAML: line ")
    assert "<unicode string>" not in message


def test_a_top_level_list_cites_the_file(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text("- kafka\n")
    with pytest.raises(ConfigError, match=str(path)):
        load(path, env={})


def test_check_credentials_reads_every_reference(tmp_path: Path) -> None:
    secret = tmp_path / "app-secret"
    secret.write_text("s3cret\n")
    data = helpers.config_dict("b:9092", "http://sim")
    data["bots"]["app"]["credentials"] = {"app_secret": {"file": str(secret)}}
    keys = check_credentials(from_mapping(data, env=helpers.CREDENTIALS))
    assert "bots.app.credentials.app_secret" in keys
    assert "bots.hook.credentials.token" in keys

    missing = {k: v for k, v in helpers.CREDENTIALS.items() if k != "T_MIND_SECRET"}
    with pytest.raises(ConfigError) as caught:
        check_credentials(from_mapping(data, env=missing))
    assert caught.value.key == "bots.mind.credentials.app_secret"
    assert "T_MIND_SECRET is not set" in caught.value.reason

    secret.unlink()
    with pytest.raises(ConfigError, match=f"cannot read {secret}"):
        check_credentials(from_mapping(data, env=helpers.CREDENTIALS))


def test_credentials_are_read_once_at_load_and_never_from_the_process_environment(
    tmp_path: Path,
) -> None:
    """A backend is given the value read at load: changing the file (or the environment)
    afterwards changes nothing, and a variable set only in the process is not seen."""
    secret = tmp_path / "token"
    secret.write_text("first\n")
    data = {
        "bots": {
            "hook": {"backend": "feishu_webhook", "credentials": {"token": {"file": str(secret)}}},
            "app": {
                "backend": "feishu_message",
                "app_id": "cli_1",
                "credentials": {"app_secret": {"env": "PATH"}},  # set in every process
            },
        }
    }
    settings = from_mapping(data, env={})
    secret.write_text("second\n")
    assert settings.bots["hook"].credentials["token"].secret().reveal() == "first"
    with pytest.raises(ConfigError) as caught:
        settings.bots["app"].credentials["app_secret"].secret()
    assert caught.value.key == "bots.app.credentials.app_secret"
    assert caught.value.reason == "environment variable PATH is not set"


def test_check_credentials_reads_store_and_broker_passwords_only_when_used() -> None:
    data = {
        "kafka": {"sasl_password": {"env": "KAFKA_PW"}},
        "idempotency": {"redis_password": {"env": "REDIS_PW"}},
    }
    assert check_credentials(from_mapping(data, env={})) == []  # neither is in use
    data["kafka"].update(security_protocol="SASL_SSL", sasl_mechanism="PLAIN")
    data["idempotency"]["store"] = "redis"
    with pytest.raises(ConfigError, match="KAFKA_PW is not set"):
        check_credentials(from_mapping(data, env={"REDIS_PW": "x"}))
    with pytest.raises(ConfigError, match="REDIS_PW is not set"):
        check_credentials(from_mapping(data, env={"KAFKA_PW": "x"}))


def test_the_dev_configuration_passes_every_check() -> None:
    from cardq.devtools.dev import DEV_CREDENTIALS, dev_config_path

    settings = load(dev_config_path(), env=DEV_CREDENTIALS)
    assert len(check_credentials(settings)) >= 4


def test_the_readme_error_examples_are_what_the_worker_prints(tmp_path: Path) -> None:
    """The README shows two errors; both are produced word for word by these files."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "bots": {
                    "ops-app": {
                        "backend": "feishu_message",
                        "app_id": "cli_a1",
                        "credentials": {"app_secret": {"env": "OPS_APP_SECRET"}},
                    }
                }
            }
        )
    )
    with pytest.raises(ConfigError) as caught:
        check_credentials(load(path, env={}))
    assert f"cardq: {caught.value}" in readme
    path.write_text("delivery:\n  max_atempts: 3\n")
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    shown = f"cardq: {caught.value}".split("(known: ")[0]
    assert shown in readme


def test_env_overrides_lists_only_configuration_variables() -> None:
    env = {"CARDQ_CONFIG": "/x", "CARDQ_KAFKA__GROUP_ID": "g", "CARDQ_DEV_APP_SECRET": "s"}
    assert config.env_overrides(env) == ["CARDQ_KAFKA__GROUP_ID"]
