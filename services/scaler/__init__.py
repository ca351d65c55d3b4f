"""The scaler: decides how many replicas each service runs and starts or stops them (issue #15)."""
