"""Signing in as the operator: ``/login`` takes the API token once and sets a signed,
HttpOnly, SameSite=Strict cookie (``handlers.base.BaseHandler.require_operator``
accepts it with the XSRF token); ``POST /logout`` clears it."""

import hmac

from handlers.base import OPERATOR_COOKIE, OPERATOR_COOKIE_DAYS, operator_cookie_value
from handlers.openapi import error, html_answer, operation, redirect
from handlers.pages import PageHandler


def local_path(value):
    """Where to go after signing in: a path on this site, never another site."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


class LoginHandler(PageHandler):
    """``GET /login``: the form; ``POST /login``: the API token in, the cookie out."""

    @operation(summary="The operator's sign-in form", tags=["pages"], parameters=[{
        "name": "next", "in": "query", "schema": {"type": "string"},
        "description": "a path on this site to go to once signed in"}], responses={
            200: html_answer("the form"), 400: error("next given twice", page=True)})
    def get(self):
        self.render("login.html", next=local_path(self.query_argument("next", "")),
                    refused=None, configured=bool(self.config.api_token))

    @operation(summary="Sign in with the API token", tags=["pages"], requestBody={
        "required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "required": ["token", "_xsrf"], "properties": {
                "token": {"type": "string"}, "next": {"type": "string"},
                "_xsrf": {"type": "string", "description": "the form's XSRF token"}}}}}},
        responses={302: redirect("signed in (a signed operator cookie): to next"),
                   403: error("not the API token (the form again), or no XSRF token",
                              page=True)})
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

    @operation(summary="Sign out", tags=["pages"], requestBody={
        "required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "required": ["_xsrf"],
            "properties": {"_xsrf": {"type": "string"}}}}}},
        responses={302: redirect("signed out: to the upload page"),
                   403: error("no XSRF token", page=True)})
    def post(self):
        self.clear_cookie(OPERATOR_COOKIE)
        self.redirect("/")
