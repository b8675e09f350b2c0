"""A client package for the example platform, as a team would write one for ``--target python:<module>``.

Each module implements one toolclash scenario (the protocol: toolclash/targets/pyclient.py) over the platform's
HTTP API, with the standard library only. It is found on ``sys.path`` (``PYTHONPATH=examples/client``) or
installed as a package declaring, in its pyproject.toml::

    [project.entry-points."toolclash.targets"]
    example-credits = "platform_client.credits"
"""
