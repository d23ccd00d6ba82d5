"""The small authenticated HTTP API that the campus portal calls to lift a client's limit.

:func:`webhook.app.build_app` builds the aiohttp application from dependencies made once at
start-up; :func:`webhook.serve.start_webhook` serves it on the configured addresses.
"""
