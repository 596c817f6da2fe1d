"""The ``spotify-events`` command.

Subcommands live next to what they drive and are imported only when invoked,
so ``spotify-events --help`` works on a core install and the collector's
server dependencies are needed only by the commands that use them.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

#: command name -> "module:attribute" of a click command
SUBCOMMANDS = {
    "collector": "spotify_events.collector.cli:collector_command",
    "report": "spotify_events.collector.cli:report_command",
    "deliver": "spotify_events.scaleout.cli:deliver_command",
    "loadgen": "spotify_events.loadgen:loadgen_command",
    "demo": "spotify_events.demo:demo_command",
    "codegen": "spotify_events.codegen:codegen_command",
    "schemas": "spotify_events.codegen:schemas_group",
    "queue": "spotify_events.queue_tools:queue_group",
    "agent": "spotify_events.agent:agent_command",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if (exc.name or "").startswith("spotify_events"):
                return None  # a command this build does not ship
            raise click.ClickException(
                f"'{cmd_name}' needs an optional dependency ({exc.name}); "
                "install it with: pip install 'spotify-events[collector]'"
            ) from exc
        command: click.Command = getattr(module, attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spotify-events")
def main(**_: Any) -> None:
    """Typed, durable, loss-detected event delivery."""


if __name__ == "__main__":
    main()
