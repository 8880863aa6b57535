"""The Starlette app, its routes and middleware, and the ``rapport`` command line."""
