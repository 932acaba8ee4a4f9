"""The admin's commands that talk to a running daemon or check a configuration."""
