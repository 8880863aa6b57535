"""Live sessions: wire messages, the session state machine, budgets and the waiting room."""
