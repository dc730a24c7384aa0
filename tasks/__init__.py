"""rf-acquisition tasks."""
