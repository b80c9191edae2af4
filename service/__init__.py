"""ScanFort central status service: agent API, dashboard, metrics, protected-object store.

Public entry points (everything else is internal):

- ``service.bootstrap.initialize(data_dir, ...)``: first-time setup (``central init``)
- ``service.settings.load_settings(data_dir, **overrides)``: the frozen configuration
- ``service.app.create_app(settings)``: the ASGI application
- ``service.server.serve(settings, host, port)`` / ``BackgroundServer(settings, port=0)``
- ``service.cli.register(subparsers)``: the ``scanfort central`` commands
"""
