"""Dataset preparation that works without network access."""
