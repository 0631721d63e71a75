"""brandtune."""
