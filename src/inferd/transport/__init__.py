"""Doors into the service: HTTP (all protocols on one port) and gRPC."""
