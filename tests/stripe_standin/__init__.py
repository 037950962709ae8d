"""Local Stripe for the tests: ``localstripe`` plus a stand-in serving what it lacks (see ``server.py``).

``fixtures3.json`` is Stripe's own example object for every API resource, from the public ``stripe/openapi``
repository (``openapi/fixtures3.json``, MIT licence, Copyright (c) 2011- Stripe, Inc.).
"""
