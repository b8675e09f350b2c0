"""The example platform (``examples/platform/app.py``): a small real HTTP service to point toolclash at."""
