"""The daemon's API: the roof over everything else.

- ``http``: the routes (``/healthz``, ``/readyz``, ``/metrics``, the status
  page and the JSON API) behind their guards (``Host``, body, writes);
- ``hosts``: which ``Host`` names the listener answers to (DNS rebinding);
- ``listener``: the server under them, with its connection limits;
- ``status``: the status picture's JSON documents (``docs/api.md``);
- ``pause``: the pause and resume routes;
- ``readiness``: whether the daemon works *now*, part by part;
- ``daemon``: the glue between the running daemon (``app.Daemon``) and the
  listener: which routes it serves and what they read.

Nothing below this package imports it: the floor (``ops``: logging, metrics,
systemd) is for everyone, this package only for ``app`` and the commands.
"""
