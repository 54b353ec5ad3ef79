"""Signing in as the operator: ``/login`` takes the API token once and sets a signed,
HttpOnly, SameSite=Strict cookie (``handlers.base.BaseHandler.require_operator``
accepts it with the XSRF token); ``POST /logout`` clears it."""

import hmac

from handlers.base import OPERATOR_COOKIE, OPERATOR_COOKIE_DAYS, operator_cookie_value
from handlers.pages import PageHandler


def local_path(value):
    """Where to go after signing in: a path on this site, never another site."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


class LoginHandler(PageHandler):
    """``GET /login``: the form; ``POST /login``: the API token in, the cookie out."""

    def get(self):
        self.render("login.html", next=local_path(self.get_query_argument("next", "")),
                    refused=None, configured=bool(self.config.api_token))

    def post(self):
        token = self.config.api_token
        given = self.get_body_argument("token", "")
        following = local_path(self.get_body_argument("next", ""))
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            self.set_status(403)
            self.render("login.html", next=following, configured=bool(token),
                        refused="That is not the API token." if token else None)
            return
        self.set_signed_cookie(OPERATOR_COOKIE, operator_cookie_value(token),
                               expires_days=OPERATOR_COOKIE_DAYS, httponly=True,
                               samesite="Strict", secure=self.request.protocol == "https")
        self.redirect(following)


class LogoutHandler(PageHandler):
    """``POST /logout``: forget the operator cookie."""

    def post(self):
        self.clear_cookie(OPERATOR_COOKIE)
        self.redirect("/")
