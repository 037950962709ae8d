"""Query parameters every listing route shares: ``cursor`` and ``limit`` (see ``controlplane.paging``)."""

from __future__ import annotations

from typing import Annotated

from litestar.params import QueryParameter

from controlplane.paging import AUDIT_PAGES, TENANT_PAGES

#: ``next_cursor`` of the previous page.
Cursor = Annotated[str | None, QueryParameter(max_length=1024, description="next_cursor of the previous page")]
#: Rows per page of the tenant API's listings.
Limit = Annotated[int, QueryParameter(ge=1, le=TENANT_PAGES.maximum, description="rows per page")]
#: Rows per page of the audit listings.
AuditLimit = Annotated[int, QueryParameter(ge=1, le=AUDIT_PAGES.maximum, description="rows per page")]
