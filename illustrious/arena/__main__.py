from illustrious.arena.cli import entry

entry()
