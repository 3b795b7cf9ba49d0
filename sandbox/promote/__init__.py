"""Routing and promotion: the nginx router in front of an env's instances (promotion comes later)."""
