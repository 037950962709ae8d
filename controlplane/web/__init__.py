"""The web pages: the super-admin dashboard (``/admin/ui/``) and the tenant app (``/t/{slug}/``, and ``/``
on a tenant's subdomain), server-rendered with Jinja2 and enhanced with the vendored htmx.

- ``templating``: the Jinja2 environment (autoescaped), filters and the static files' cache-busted URLs.
- ``security``: the headers every page carries (a strict Content-Security-Policy) and CSRF tokens.
- ``sessions``: the signed-in person in HttpOnly cookies, turned into the same bearer credential the
  APIs take (so the admin guard and the tenant API's authentication and permissions apply unchanged).
- ``pages``: rendering a page with what every page needs (the person, the CSRF token, links).
- ``errors``: HTML error pages, and the redirect to the sign-in form when signed out.
- ``charts``: SVG charts drawn on the server.
- ``admin`` and ``tenant``: the pages themselves; ``routes`` mounts them.

Pages call the same services the APIs do; they never reach a database the API could not.
"""
