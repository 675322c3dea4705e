"""The model runtime: runner contract, runner, watchdog, engines."""
