"""Processes on this machine: one supervisor for child processes, a federation of N
organizations on loopback, and the demo. No terminal output from here: the CLI renders
what these report."""
