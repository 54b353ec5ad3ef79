"""The notifier's settings: which actions run, and settings that cannot work refused at start."""

import base64

import pytest

from config import ConfigError, environment_names, load_config
from notify import enabled_actions

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
SMTP = {"SMTP_URL": "smtp://u:p%40ss@mail.example:2525", "MAIL_FROM": "a@example.test",
        "MAIL_TO": "b@example.test, c@example.test"}


def test_defaults_log_only_and_the_design_values():
    config = load_config([], {})
    assert enabled_actions(config) == ("log",)
    assert config.webhook_timeout == 15
    assert config.webhook_retry_delays == (5, 300, 1800, 7200, 18000, 36000)
    assert config.webhook_allow_private is False and config.mail_digest_seconds == 0
    assert {"NOTIFY_ACTIONS", "WEBHOOK_URLS", "WEBHOOK_SECRET", "WEBHOOK_TIMEOUT",
            "WEBHOOK_RETRY_DELAYS", "WEBHOOK_ALLOW_PRIVATE", "SMTP_URL", "MAIL_FROM", "MAIL_TO",
            "MAIL_DIGEST_SECONDS"} <= environment_names()


def test_every_configured_action_runs_unless_notify_actions_says_otherwise():
    env = dict(SMTP, WEBHOOK_URLS="https://a.example/hook, https://B.example/Hook",
               WEBHOOK_SECRET=SECRET, WEBHOOK_ALLOW_PRIVATE="true",
               WEBHOOK_RETRY_DELAYS="1,2.5", MAIL_DIGEST_SECONDS="60")
    config = load_config([], env)
    assert enabled_actions(config) == ("log", "webhook", "email")
    assert config.webhook_urls == ("https://a.example/hook", "https://B.example/Hook")
    assert config.mail_to == ("b@example.test", "c@example.test")
    assert config.webhook_retry_delays == (1, 2.5) and config.webhook_allow_private
    assert config.mail_digest_seconds == 60
    assert enabled_actions(load_config(["--notify-actions=webhook"], env)) == ("webhook",)


@pytest.mark.parametrize("env,expected", [
    ({"NOTIFY_ACTIONS": "log,sms"}, "NOTIFY_ACTIONS takes"),
    ({"NOTIFY_ACTIONS": "webhook"}, "needs WEBHOOK_URLS"),
    ({"NOTIFY_ACTIONS": "email"}, "needs SMTP_URL"),
    ({"WEBHOOK_URLS": "https://a.example/"}, "WEBHOOK_SECRET is required"),
    ({"WEBHOOK_URLS": "https://a.example/", "WEBHOOK_SECRET": "s3cret"}, "start with whsec_"),
    ({"WEBHOOK_URLS": "https://a.example/", "WEBHOOK_SECRET": "whsec_%%%"}, "base64"),
    ({"WEBHOOK_URLS": "https://a.example/",
      "WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"short").decode()}, "24 to 64 bytes"),
    ({"WEBHOOK_URLS": "ftp://a.example/", "WEBHOOK_SECRET": SECRET}, "http:// or https://"),
    ({"WEBHOOK_TIMEOUT": "-1"}, "WEBHOOK_TIMEOUT"),
    ({"WEBHOOK_RETRY_DELAYS": "5,0"}, "WEBHOOK_RETRY_DELAYS"),
    ({"WEBHOOK_RETRY_DELAYS": ","}, "WEBHOOK_RETRY_DELAYS"),
    ({"SMTP_URL": "http://mail.example"}, "SMTP_URL must be"),
    ({"SMTP_URL": "smtp://mail.example"}, "needs MAIL_FROM and MAIL_TO"),
    (dict(SMTP, MAIL_DIGEST_SECONDS="-5"), "MAIL_DIGEST_SECONDS"),
])
def test_settings_that_cannot_work_are_refused(env, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config([], env)


def test_the_smtp_url_gives_host_port_tls_and_credentials():
    from notify.email import MailChannel

    class Context:
        config = load_config([], dict(SMTP, SMTP_URL="smtps://me:p%40ss@mail.example"))
    smtp = MailChannel(Context).smtp
    assert (smtp["hostname"], smtp["port"], smtp["use_tls"], smtp["start_tls"]) == (
        "mail.example", 465, True, False)
    assert (smtp["username"], smtp["password"]) == ("me", "p@ss")
    Context.config = load_config([], dict(SMTP, SMTP_URL="smtp+starttls://mail.example"))
    smtp = MailChannel(Context).smtp
    assert (smtp["port"], smtp["start_tls"], smtp["username"]) == (587, True, None)


def test_a_webhook_url_error_does_not_show_its_password():
    with pytest.raises(ConfigError) as error:
        load_config([], {"WEBHOOK_URLS": "ftp://user:hook-secret@a.example/",
                         "WEBHOOK_SECRET": SECRET})
    assert "ftp://user:***@a.example/" in str(error.value)
    assert "hook-secret" not in str(error.value)
