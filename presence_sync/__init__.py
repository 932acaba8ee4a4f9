"""presence-sync: NFON line state, shown in Teams, Outlook and Slack."""

__version__ = "0.1.0"
