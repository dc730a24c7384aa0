"""rf-acquisition flows."""
