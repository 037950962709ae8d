"""Run ``localstripe`` for the tests: on 127.0.0.1, a kernel-chosen port (printed as ``PORT <n>``), in memory.

localstripe's own entry point listens on every interface and pickles its whole store to
``/tmp/localstripe.pickle`` after every write (shared by every process on the machine); the tests want
neither, so this launcher serves the same aiohttp app without the disk dumps.

It adds one route localstripe's API has no way to reach: ``POST /_standin/subscriptions/{id}/renew`` runs
localstripe's own renewal (a new invoice for the subscription, charged to the customer's default card;
a declined charge makes the subscription ``past_due``, a paid one ``active``) and answers
``{"subscription": ..., "invoice": ...}``.
"""

from __future__ import annotations

import socket

from aiohttp import web
from localstripe import resources, server
from localstripe.errors import UserError


async def renew(request: web.Request) -> web.Response:
    try:
        subscription = resources.Subscription._api_retrieve(request.match_info["id"])
    except UserError as exc:
        return exc.to_response()
    subscription._create_invoice()
    invoices = resources.Invoice._api_list_all(None, customer=subscription.customer, subscription=subscription.id)
    latest = invoices._list[-1]  # the store keeps insertion order: the one just made
    return web.json_response({"subscription": subscription._export(), "invoice": latest._export()})


def main() -> None:
    server.app.router.add_post("/_standin/subscriptions/{id}/renew", renew)
    resources.Store.dump_to_disk = lambda self: None  # type: ignore[method-assign]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    web.run_app(server.app, sock=sock, print=None, access_log=None)


if __name__ == "__main__":
    main()
