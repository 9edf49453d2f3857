"""Metrics, timings and logs. Imports nothing else of inferd."""
