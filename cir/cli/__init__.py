"""The command lines: one module per command (argparse + a call into the library)."""
