"""Processes on this machine: one supervisor for child processes, a federation of N
organizations on loopback, and the demo. Nothing here imports typer or rich: the CLI
renders what these report."""
