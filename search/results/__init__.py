"""What a search hands back: the winner as a complete, runnable file (``export``) and its honest
confirmation on held-out test items with new seeds (``confirm``)."""
