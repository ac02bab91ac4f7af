"""The canary/rollback state machine and analysis verdicts: pure, time and observations passed in."""
