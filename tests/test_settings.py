"""Settings: profile defaults, explicit values, one-line errors naming the flag, and masked secrets."""

from __future__ import annotations

from typing import Any

import pytest

from toolclash.settings import OPTIONS, Settings, SettingsError, mask_url


def test_defaults_are_the_normal_profile() -> None:
    s = Settings.from_mapping({})
    assert s.profile == "normal"
    assert (s.wait_min, s.wait_max, s.gate_conflict_rate) == (0.5, 1.5, 0.05)
    assert s.strategy == "atomic"
    assert s.gate_p95_ms == 2000.0
    assert s.gate_success_rate == 0.999


def test_minus_one_sentinels_resolve_from_the_normal_profile() -> None:
    s = Settings.from_mapping({"profile": "normal", "wait_min": -1.0, "wait_max": -1.0, "gate_conflict_rate": -1.0})
    assert (s.wait_min, s.wait_max, s.gate_conflict_rate) == (0.5, 1.5, 0.05)


def test_stress_profile_defaults() -> None:
    s = Settings.from_mapping({"profile": "stress", "wait_min": -1.0, "wait_max": -1.0, "gate_conflict_rate": -1.0})
    assert (s.wait_min, s.wait_max, s.gate_conflict_rate) == (0.0, 0.0, 0.20)


def test_locust_none_profile_means_normal() -> None:
    # Locust's own --profile defaults to None
    s = Settings.from_mapping({"profile": None, "strategy": None})
    assert (s.profile, s.strategy, s.wait_min) == ("normal", "atomic", 0.5)


def test_explicit_values_win_over_the_profile() -> None:
    s = Settings.from_mapping({"profile": "stress", "wait_min": 0.1, "wait_max": 2.0, "gate_conflict_rate": 0.3})
    assert (s.wait_min, s.wait_max, s.gate_conflict_rate) == (0.1, 2.0, 0.3)
    s = Settings.from_mapping({"profile": "normal", "wait_min": 0.0, "wait_max": 0.0, "gate_conflict_rate": 0.0})
    assert (s.wait_min, s.wait_max, s.gate_conflict_rate) == (0.0, 0.0, 0.0)


def test_strings_from_the_environment_are_coerced() -> None:
    s = Settings.from_mapping({"accounts": "7", "gate_p95_ms": "1500", "strategy": "serializable"})
    assert (s.options_of("credits").accounts, s.gate_p95_ms, s.strategy) == (7, 1500.0, "serializable")


def test_undeclared_options_pass_through_as_extra() -> None:
    s = Settings.from_mapping({"num_users": 10, "jobs_queue": "q1"})
    assert dict(s.extra) == {"num_users": 10, "jobs_queue": "q1"}


@pytest.mark.parametrize(("values", "flag"), [
    ({"strategy": "yolo"}, "--strategy"),
    ({"fault": "everything"}, "--fault"),
    ({"profile": "turbo"}, "--profile"),
    ({"amount_min": 5, "amount_max": 2}, "--amount-min"),
    ({"amount_min": 0}, "--amount-min"),
    ({"accounts": 0}, "--accounts"),
    ({"accounts": "seven"}, "--accounts"),
    ({"wait_min": 2.0, "wait_max": 1.0}, "--wait-min"),
    ({"gate_success_rate": 1.5}, "--gate-success-rate"),
    ({"run_id": "../elsewhere"}, "--run-id"),
    ({"run_id": "a run"}, "--run-id"),
    ({"run_id": "-rf"}, "--run-id"),
    ({"database_url": "mysql://x"}, "DATABASE_URL"),
    ({"database_url": "postgresql://host:notaport/db"}, "DATABASE_URL"),
    ({"database_url": "postgresql://host:99999/db"}, "DATABASE_URL"),
    ({"database_url": "not a url"}, "DATABASE_URL"),
])
def test_bad_value_raises_one_line_naming_the_flag(values: dict[str, Any], flag: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_mapping(values)
    message = str(info.value)
    assert flag in message
    assert "\n" not in message
    assert message.strip() == message


def test_run_id_with_a_trailing_newline_is_rejected() -> None:
    # `$` in the run-id pattern also matches before a final newline; a directory name must not end in one.
    with pytest.raises(SettingsError, match="--run-id"):
        Settings.from_mapping({"run_id": "abc\n"})


def test_good_run_ids_and_urls_are_accepted() -> None:
    for run_id in ("20261123-101500-ab12cd", "ci.run_7", "a"):
        assert Settings.from_mapping({"run_id": run_id}).run_id == run_id
    for url in ("postgresql://u:pw@localhost:5432/db", "postgres://h/db", "postgresql://u@[::1]:6432/db?sslmode=require"):
        assert Settings.from_mapping({"database_url": url}).database_url == url


def test_bad_database_url_error_masks_the_password() -> None:
    for url in ("postgresql://u:s3cr3t@host:notaport/db", "mysql://u:s3cr3t@x/db"):
        with pytest.raises(SettingsError) as info:
            Settings.from_mapping({"database_url": url})
        assert "s3cr3t" not in str(info.value)
        assert "***" in str(info.value)


@pytest.mark.parametrize(("url", "password", "masked"), [
    ("postgresql://user:s3cr3t@db.example:5432/app", "s3cr3t", "postgresql://user:***@db.example:5432/app"),
    ("postgresql://user:p@ss@host/db", "p@ss", "postgresql://user:***@host/db"),
    ("postgresql://user:pa:ss@host/db", "pa:ss", "postgresql://user:***@host/db"),
    ("postgresql://:onlypw@host/db", "onlypw", "postgresql://:***@host/db"),
    ("postgresql://user:p%40ss%2F@host/db", "p%40ss%2F", "postgresql://user:***@host/db"),
    ("postgresql://user@host/db?password=s3cr3t", "s3cr3t", "postgresql://user@host/db?password=***"),
    ("postgresql://user@host/db?sslmode=require&PASSWORD=s3cr3t&application_name=x", "s3cr3t",
     "postgresql://user@host/db?sslmode=require&PASSWORD=***&application_name=x"),
    ("postgresql://user:s3cr3t@host", "s3cr3t", "postgresql://user:***@host"),
    ("redis://:hunter2@localhost:6379/0", "hunter2", "redis://:***@localhost:6379/0"),
])
def test_mask_url_masks_the_password(url: str, password: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert password not in mask_url(url)


@pytest.mark.parametrize("url", ["postgresql://u:hunter2?x@host/db", "postgresql://u:hunter2#x@host/db"])
def test_mask_url_masks_a_password_holding_url_delimiters(url: str) -> None:
    # libpq reads the password up to the '@' (psycopg2.extensions.parse_dsn gives 'hunter2?x'), so it works.
    assert "hunter2" not in mask_url(url)


def test_database_url_with_such_a_password_is_never_shown() -> None:
    url = "postgresql://u:hunter2?x@host/db"
    try:
        shown = repr(Settings.from_mapping({"database_url": url}).public())
    except SettingsError as exc:
        shown = str(exc)
    assert "hunter2" not in shown


def test_mask_url_leaves_urls_without_password_alone() -> None:
    for url in ("postgresql://user@host:5432/db", "postgresql://host/db?sslmode=require", "no url at all", ""):
        assert mask_url(url) == url


def test_public_never_contains_the_password() -> None:
    s = Settings.from_mapping({"database_url": "postgresql://app:s3cr3t-db@host:5432/app",
                               "auth_database_url": "postgresql://auth:t0p-s3cret@host/auth?password=t0p-s3cret",
                               "redis_url": "redis://:r3dis-pw@host:6379/0", "num_users": 3})
    public = s.public()
    text = repr(public)
    for secret in ("s3cr3t-db", "t0p-s3cret", "r3dis-pw"):
        assert secret not in text
    assert public["database_url"] == "postgresql://app:***@host:5432/app"
    assert public["redis_url"] == "redis://:***@host:6379/0"
    assert public["num_users"] == 3
    assert s.database_url == "postgresql://app:s3cr3t-db@host:5432/app"  # the real value is still usable


def test_every_option_is_a_settings_field_and_secrets_are_declared() -> None:
    fields = set(Settings.__dataclass_fields__) - {"extra", "scenarios", "scenario_options", "target_spec"}
    assert {o.name for o in OPTIONS} == fields
    assert [o.name for o in OPTIONS if o.is_secret] == ["database_url", "auth_database_url", "redis_url",
                                                       "clickhouse_url", "pgbouncer_url"]
    assert Settings.from_mapping({o.name: o.default for o in OPTIONS}) == Settings.from_mapping({})


def test_scenario_options_strategy_and_fault_resolve_per_scenario() -> None:
    s = Settings.from_mapping({"accounts": 3, "strategy": "naive", "fault": "leak_session"})
    assert s.options_of("credits").accounts == 3
    assert (s.strategy_for("credits"), s.fault_for("credits")) == ("naive", "leak_session")
    public = s.public()
    assert public["accounts"] == 3 and public["strategies"] == {"credits": "naive"}
    assert Settings.from_mapping(s.values()) == s  # what the master sends its workers round-trips


@pytest.mark.parametrize(("values", "flag"), [({"strategy": "last_writer_wins"}, "--strategy"),
                                              ({"fault": "bogus"}, "--fault")])
def test_strategy_and_fault_must_belong_to_a_loaded_scenario(values: dict[str, Any], flag: str) -> None:
    with pytest.raises(SettingsError, match=flag):
        Settings.from_mapping(values)


def test_options_cli_lists_every_scenarios_options_and_refuses_an_unknown_one(capsys: Any) -> None:
    from toolclash import options

    assert options.main(["credits", "config"]) == 0
    out = capsys.readouterr().out
    for flag in ("--database-url", "--metrics-port", "--accounts", "--fields", "--strategy"):
        assert flag in out, flag
    assert "--queue-capacity" not in out  # only the scenarios asked for
    assert options.main(["nope"]) == 2
    assert "unknown scenario(s) nope" in capsys.readouterr().err
