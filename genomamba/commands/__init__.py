"""The ``genomamba`` subcommands, one module each; ``genomamba.__main__`` maps names to them.

Every module's ``main(argv)`` takes the remaining command-line words and returns an exit code.
"""
