"""`inferd bench`: a closed-loop load generator for KServe v2 HTTP endpoints (perf_analyzer's job)."""
