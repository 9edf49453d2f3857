"""The HTTP transport: inferd's own HTTP/1.1 server (server.py) in front of a router (app.py)."""
