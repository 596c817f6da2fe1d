"""``python -m spotify_events`` runs the ``spotify-events`` command."""

from .cli import main

main()
