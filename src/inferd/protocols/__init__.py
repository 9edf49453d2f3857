"""Wire payloads <-> inferd types. Pure functions: no web framework, no grpc, no torch."""
