"""Examples that use toolclash from the outside (no toolclash import in them)."""
