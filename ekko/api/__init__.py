"""Ekko's resource types (the API), their units, the CRD generator and the offline manifest check."""
