"""Locust User classes (agents): thin wrappers that choose which tool to call."""
