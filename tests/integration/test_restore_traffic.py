"""A restore while the tenant is busy: reads and writes keep coming through the API of a running ``cardvault
serve`` (another process, which hears of the switch by NOTIFY) during the whole restore. Requests in the
switch get a clean 503 (never a 500), and afterwards the API serves the restored database: what was
written after the backup is gone, what is written after the switch stays."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx

from controlplane.platform import Platform
from controlplane.provisioning.models import OperationState
from controlplane.provisioning.service import TenantService
from tests.conftest import Served
from tests.integration.restore_support import add_card, cards_via_api, restores_of
from tests.integration.tenant_support import provision_with_admin

CARDS = "/t/acme/api/cards"


async def test_a_restore_under_traffic_answers_503_not_500_and_then_serves_the_restored_data(
    served: Served, platform: Platform, service: TenantService
) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        await _restore_under_traffic(client, platform, service)


async def _restore_under_traffic(client: httpx.AsyncClient, platform: Platform, service: TenantService) -> None:
    _, auth = await provision_with_admin(client, "acme")
    kept = [await add_card(client, "acme", auth, f"K-{i}") for i in range(3)]
    statuses: Counter[int] = Counter()
    unavailable: list[dict[str, Any]] = []
    written: list[tuple[float, str]] = []  # (when the write was answered, its card number)
    stop = asyncio.Event()

    async def traffic(writes: bool) -> None:
        n = 0
        while not stop.is_set():
            if writes:
                response = await client.post(CARDS, json={"cardnumber": f"T-{n}"}, headers=auth)
            else:
                response = await client.get(CARDS, headers=auth)
            statuses[response.status_code] += 1
            if response.status_code == 201:
                written.append((time.monotonic(), response.json()["cardnumber"]))
            elif response.status_code >= 500:
                unavailable.append(response.json())
            n += 1
            await asyncio.sleep(0.002)

    async with restores_of(platform, service) as r:
        backup = await r.backup("acme")
        tasks = [asyncio.create_task(traffic(writes)) for writes in (True, False, False)]
        try:
            await asyncio.sleep(0.3)
            started = time.monotonic()
            op = await r.restores.restore("acme", backup_id=backup.id, pre_backup=False)
            finished = time.monotonic()
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    assert op.state is OperationState.SUCCEEDED
    assert set(statuses) <= {200, 201, 503}, statuses
    assert statuses[200] > 0 and statuses[201] > 0, statuses
    assert all(body["error"] == "tenant_unavailable" and body["retry_after"] >= 1 for body in unavailable), unavailable

    served = {c["cardnumber"] for c in await cards_via_api(client, "acme", auth)}
    assert {c["cardnumber"] for c in kept} <= served
    before_restore = [card for at, card in written if at < started]
    after_switch = [card for at, card in written if at > finished]
    assert before_restore and after_switch, (len(before_restore), len(after_switch))
    # Written after the backup and before the restore began: not in the backup, so gone. Written once the
    # restore was done: in the restored database (ids continue after the restored rows).
    assert not served & set(before_restore)
    assert set(after_switch) <= served
