"""JSON Schemas of tailhook's config, input events and notification objects.

Installed as the package ``agent.schemas``; load them with ``agent.schemas_dir``.
"""
