"""Hybrid routing: tiers, the router, remote endpoints, the audit log, cost and energy."""
