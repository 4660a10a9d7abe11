"""The built-in selection policies, one small class per file."""
