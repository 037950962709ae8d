"""Tenants' stored files kept in step with their ``files`` rows, and delivered to browsers and CDNs.

Storage hygiene (``service``, ``scan``): objects with no row and rows with no object, found per tenant,
quarantined, restored or deleted after a grace period, reported and metered. Delivery
(``delivery_routes``): signed links to card images and the public route that serves them (the rules are
``controlplane.storage.delivery``, below the CardVault API that uses them too).
"""
