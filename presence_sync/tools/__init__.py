"""The admin's one-shot commands (``status``, ``resync``, ...), one module each."""
