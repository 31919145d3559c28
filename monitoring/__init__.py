"""Monitoring: outcomes joined to the prediction log, performance and drift per time window, reports and gauges."""
