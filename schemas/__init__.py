"""JSON Schemas of tailhook's config, input events and notification objects.

Installed as the data package ``agent.schema_data``; load them with ``agent.schemas``.
"""
