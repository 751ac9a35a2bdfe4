"""One module per ``normlab`` subcommand; each defines ``register(subparsers)``."""
