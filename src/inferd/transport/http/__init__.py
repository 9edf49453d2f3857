"""The HTTP transport: a plain ASGI app served by uvicorn."""
