"""Admin commands beside the daemon (``check``, ...), one module each."""
