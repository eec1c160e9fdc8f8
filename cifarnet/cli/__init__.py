"""The `cifarnet-exp` command line: commands, terminal display, library log settings."""
