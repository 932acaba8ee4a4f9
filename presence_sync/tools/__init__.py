"""The admin's one-shot commands (``check``, ``status``, ``resync``, ...), one module each."""
