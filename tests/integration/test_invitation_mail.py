"""Invitations by mail: inviting (or re-inviting) a user queues a mail whose link carries the token the
API answered; the invitee takes it from the mail a real SMTP server received, accepts it through the
existing endpoint and logs in. The users quota holds: invitations count when they are made, so
accepting one never goes past ``max_users``, and a refused invitation mails nothing."""

from __future__ import annotations

from typing import Any

from controlplane.platform import Platform
from controlplane.settings import Settings
from tests.integration.auth_support import tenant_rows
from tests.integration.signup_support import (
    PUBLIC_URL,
    bearer_of,
    link_in,
    onboarding_settings,
    outbox_rows,
    running,
    sender,
    sign_up,
    token_of,
)
from tests.smtp_harness import SmtpServer

INVITEE_PASSWORD = "the invitee's own passphrase"


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code, body
    return body


async def test_an_invitee_accepts_the_link_from_the_mail_and_logs_in(
    settings: Settings, smtp_server: SmtpServer
) -> None:
    async with running(onboarding_settings(settings, smtp_url=smtp_server.url)) as client:
        admin = bearer_of(await sign_up(client, "invite-shop", tier="professional"))
        await sender(client).deliver()  # the signup's own verification mail
        await smtp_server.wait_for(1)

        made = await client.post(
            "/t/invite-shop/api/users", json={"email": "New.Member@x.test", "role": "collection_manager"}, headers=admin
        )
        assert made.status_code == 201, made.text
        invited = made.json()
        assert (await sender(client).deliver()).sent == 1
        (mail,) = smtp_server.to("New.Member@x.test")
        assert mail.subject == "You are invited to the CardVault workspace invite-shop"
        assert "collection manager" in mail.body
        link = link_in(mail.body, "/t/invite-shop/invitations/accept")
        assert link.startswith(f"{PUBLIC_URL}/t/invite-shop/invitations/accept?token=")
        token = token_of(link)
        assert token == invited["invite_token"]

        # A re-issued invitation is mailed too; only the newest token works.
        again = await client.post(f"/t/invite-shop/api/users/{invited['id']}/invitation", headers=admin)
        assert again.status_code == 200, again.text
        await sender(client).deliver()
        first, second = smtp_server.to("New.Member@x.test")
        assert first is mail
        newest = token_of(link_in(second.body, "/t/invite-shop/invitations/accept"))
        assert newest == again.json()["invite_token"] != token
        accept = "/t/invite-shop/auth/invitations/accept"
        _error(await client.post(accept, json={"invite_token": token, "password": INVITEE_PASSWORD}), 401,
               "invalid_credentials")  # fmt: skip

        accepted = await client.post(accept, json={"invite_token": newest, "password": INVITEE_PASSWORD})
        assert accepted.status_code == 200, accepted.text
        login = await client.post(
            "/t/invite-shop/auth/token", json={"email": "new.member@x.test", "password": INVITEE_PASSWORD}
        )
        assert login.status_code == 200, login.text
        me = await client.get(
            "/t/invite-shop/api/me", headers={"Authorization": f"Bearer {login.json()['access_token']}"}
        )
        assert me.json()["role"] == "collection_manager"

        # A user made with a password is no invitation: no mail.
        direct = await client.post(
            "/t/invite-shop/api/users",
            json={"email": "direct@x.test", "role": "user", "password": "a password of enough length"},
            headers=admin,
        )
        assert direct.status_code == 201, direct.text
    kinds = [(r["kind"], r["recipient"]) for r in await outbox_rows(settings.database.url)]
    assert kinds == [
        ("verify_email", "founder@invite-shop.test"),
        ("invitation", "New.Member@x.test"),
        ("invitation", "New.Member@x.test"),
    ]


async def test_invitations_stay_within_max_users_and_a_refused_one_mails_nothing(
    settings: Settings, platform: Platform
) -> None:
    control = settings.database.url
    async with running(onboarding_settings(settings)) as client:
        # starter: one user, the admin who signed up.
        starter = bearer_of(await sign_up(client, "tiny-shop"))
        refused = await client.post(
            "/t/tiny-shop/api/users", json={"email": "x@x.test", "role": "user"}, headers=starter
        )
        assert _error(refused, 403, "quota_exceeded")["limit"] == 1

        # professional: ten users; the admin and nine invitations fill it.
        pro = bearer_of(await sign_up(client, "pro-shop", tier="professional"))
        tokens = []
        for i in range(9):
            made = await client.post(
                "/t/pro-shop/api/users", json={"email": f"i{i}@x.test", "role": "user"}, headers=pro
            )
            assert made.status_code == 201, made.text
            tokens.append(made.json()["invite_token"])
        full = await client.post("/t/pro-shop/api/users", json={"email": "i9@x.test", "role": "user"}, headers=pro)
        assert _error(full, 403, "quota_exceeded")["usage"] == 10

        # Accepting turns an invitation into a user without adding one: still ten, and still full.
        accepted = await client.post(
            "/t/pro-shop/auth/invitations/accept", json={"invite_token": tokens[0], "password": INVITEE_PASSWORD}
        )
        assert accepted.status_code == 200, accepted.text
        assert (await tenant_rows(platform, "pro-shop", "SELECT count(*) AS n FROM users"))[0]["n"] == 10
        again = await client.post("/t/pro-shop/api/users", json={"email": "i9@x.test", "role": "user"}, headers=pro)
        _error(again, 403, "quota_exceeded")

    invitations = await outbox_rows(control, "invitation")
    assert sorted(r["recipient"] for r in invitations) == sorted(f"i{i}@x.test" for i in range(9))
