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


# -- bad values are configuration errors, never tracebacks ------------------------------

@pytest.mark.parametrize("environ, text", [
    ({"PORT": "abc"}, "PORT"),
    ({"PORT": "70000"}, "PORT"),
    ({"PORT": "-1"}, "PORT"),
    ({"PREFETCH": "0"}, "PREFETCH"),
    ({"PREFETCH": "70000"}, "PREFETCH"),
    ({"CONFIRM_TIMEOUT": "0"}, "CONFIRM_TIMEOUT"),
    ({"CONFIRM_TIMEOUT": "nan"}, "CONFIRM_TIMEOUT"),
    ({"SHUTDOWN_TIMEOUT": "-5"}, "SHUTDOWN_TIMEOUT"),
    ({"SHUTDOWN_TIMEOUT": "inf"}, "SHUTDOWN_TIMEOUT"),
    ({"CACHE_TIMEOUT": "soon"}, "CACHE_TIMEOUT"),
    ({"MAX_UPLOAD_BYTES": "0"}, "MAX_UPLOAD_BYTES"),
    ({"CACHE_MAX_BYTES": "-1"}, "CACHE_MAX_BYTES"),
    ({"DB_POOL_SIZE": "0"}, "DB_POOL_SIZE"),
    ({"IMAGE_WORKERS": "0"}, "IMAGE_WORKERS"),
    ({"MAX_IMAGE_PIXELS": "0"}, "MAX_IMAGE_PIXELS"),
    ({"MAX_IMAGE_SIDE": "1.5"}, "MAX_IMAGE_SIDE"),
    ({"THUMBNAIL_QUALITY": "0"}, "THUMBNAIL_QUALITY"),
    ({"THUMBNAIL_QUALITY": "101"}, "THUMBNAIL_QUALITY"),
    ({"THUMBNAIL_SIZES": "256,big"}, "THUMBNAIL_SIZES"),
    ({"RETRY_DELAYS": "2,x"}, "RETRY_DELAYS"),
    ({"MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS"),
    ({"MAX_DELIVERIES": "0"}, "MAX_DELIVERIES"),
    ({"STRIP_METADATA": "maybe"}, "STRIP_METADATA"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ({"PGPORT": "abc", "DB_TYPE": "postgres"}, "DATABASE_URL"),
    ({"REDIS_HOST": "r", "REDIS_PORT": "99999"}, "REDIS_URL"),
    ({"REDIS_HOST": "r", "REDIS_DB": "first"}, "REDIS_URL"),
    ({"RABBITMQ_HOST": "mq", "RABBITMQ_PORT": "x"}, "AMQP_URL"),
])
def test_a_bad_value_in_the_environment_is_a_configuration_error(environ, text):
    with pytest.raises(ConfigError, match=text):
        load_config([], environ)


@pytest.mark.parametrize("argv, text", [
    (["--port", "abc"], "--port"),
    (["--prefetch", "0"], "PREFETCH"),
    (["--thumbnail-quality", "200"], "THUMBNAIL_QUALITY"),
    (["--no-such-flag"], "no-such-flag"),
])
def test_a_bad_flag_is_a_configuration_error(argv, text):
    with pytest.raises(ConfigError, match=text):
        load_config(argv, {})


@pytest.mark.parametrize("environ", [
    {"PORT": "0"}, {"PORT": "65535"}, {"PREFETCH": "1"}, {"THUMBNAIL_QUALITY": "1"},
    {"THUMBNAIL_QUALITY": "100"}, {"SHUTDOWN_TIMEOUT": "0.5"}, {"STRIP_METADATA": "no"},
    {"LOG_LEVEL": "debug"}, {"MAX_DELIVERIES": "1"},
])
def test_values_at_their_bounds_are_taken(environ):
    load_config([], environ)


def test_the_server_reports_a_bad_value_in_one_line_and_exits_2():
    import subprocess
    import sys
    from tests.processes import ROOT, process_env
    for env in ({"PORT": "abc"}, {"PREFETCH": "0"}):
        done = subprocess.run([sys.executable, "server.py"], cwd=ROOT, env=process_env(**env),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.splitlines()
        assert line.startswith("photo-app: configuration error: ") and list(env)[0] in line
