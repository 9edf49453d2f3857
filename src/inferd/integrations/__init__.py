"""Distributed engines that run inferd cores as their replicas (``ray``: Ray Serve)."""
