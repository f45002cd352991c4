"""The hash-chained decision log, anomaly alerts and compliance reports."""
