"""Admin commands of the ``presence-sync`` CLI, one module each."""
