"""HTTP service and web page: `create_app(model)` builds the FastAPI app, `serve(model)` runs it."""

from stlser.service.app import create_app, serve

__all__ = ["create_app", "serve"]
