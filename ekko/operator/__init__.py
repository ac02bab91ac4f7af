"""The kopf operator: handlers (glue), per-pool workers, settings and metrics."""
