"""Configuration: environment names (the seed's and the URL forms), flags over both."""

import os

import pytest

from config import ROLES, ConfigError, load_config


def test_no_configuration_means_embedded_defaults():
    config = load_config([], {})
    assert config.roles == ROLES
    assert config.port == 5000
    assert config.db_type == "sqlite" and config.database_url.endswith("/data/photo-app.db")
    assert config.broker_type == "memory"
    assert config.cache_type == "memory"
    assert config.max_upload_bytes == 16 * 1024 * 1024


def test_seed_names_are_folded_into_urls():
    config = load_config([], {
        "DB_TYPE": "postgres", "PGPASSWORD": "s3cret", "PGHOST": "db", "PGDATABASE": "photos",
        "REDIS_HOST": "cache", "REDIS_PORT": "6380", "REDIS_DB": "2",
        "RABBITMQ_HOST": "mq", "RABBITMQ_PORT": "5673"})
    assert config.database_url == "postgresql://postgres:s3cret@db:5432/photos"
    assert config.cache_url == "redis://cache:6380/2"
    assert config.amqp_url == "amqp://guest:guest@mq:5673/%2F"


def test_sqlite_path_comes_from_sqlite_db_path(tmp_path):
    config = load_config([], {"DB_TYPE": "sqlite", "SQLITE_DB_PATH": str(tmp_path / "x.db")})
    assert config.database_url == "sqlite:///" + str(tmp_path / "x.db")


def test_url_forms_win_over_seed_names():
    config = load_config([], {
        "DATABASE_URL": "postgresql://u@h/d", "DB_TYPE": "sqlite",
        "REDIS_URL": "redis://r:1/0", "REDIS_HOST": "other",
        "AMQP_URL": "amqp://a", "RABBITMQ_HOST": "other"})
    assert (config.database_url, config.cache_url, config.amqp_url) == (
        "postgresql://u@h/d", "redis://r:1/0", "amqp://a")


def test_flags_override_the_environment():
    config = load_config(
        ["--port", "8080", "--database-url", "sqlite:///other.db", "--redis-url", "none",
         "--prefetch", "9", "--max-upload-bytes", "1000", "--amqp-url", "amqp://x",
         "--role", "web"],
        {"PORT": "7000", "DATABASE_URL": "postgresql://u@h/d", "PREFETCH": "3"})
    assert config.port == 8080
    assert config.database_url == "sqlite:///other.db"
    assert config.cache_type == "none"
    assert config.prefetch == 9
    assert config.max_upload_bytes == 1000
    assert config.roles == ("web",)


def test_role_takes_a_comma_list():
    config = load_config(["--role=web,notifier"], {"AMQP_URL": "amqp://x"})
    assert config.roles == ("web", "notifier")
    assert load_config(["--role=all"], {}).roles == ROLES


@pytest.mark.parametrize("argv", [["--role=web"], ["--role=processor"], ["--role=web,notifier"]])
def test_a_split_role_needs_rabbitmq(argv):
    with pytest.raises(ConfigError, match="needs a real RabbitMQ"):
        load_config(argv, {})


def test_unknown_role_and_bad_urls_are_refused():
    with pytest.raises(ConfigError, match="--role takes"):
        load_config(["--role=bogus"], {"AMQP_URL": "amqp://x"})
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        load_config([], {"DATABASE_URL": "mysql://x"})
    with pytest.raises(ConfigError, match="DB_TYPE"):
        load_config([], {"DB_TYPE": "oracle"})
    with pytest.raises(ConfigError, match="REDIS_URL"):
        load_config([], {"REDIS_URL": "memcached://x"})


def test_cache_can_be_turned_off():
    assert load_config([], {"CACHE": "none", "REDIS_HOST": "r"}).cache_type == "none"


def test_the_environment_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("PORT", "5123")
    assert load_config([]).port == 5123
    assert os.environ["PORT"] == "5123"
