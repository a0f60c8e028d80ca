"""Click commands, one module each; see nucflow.cli."""
