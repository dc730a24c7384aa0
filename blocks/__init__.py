"""rf-acquisition blocks."""
