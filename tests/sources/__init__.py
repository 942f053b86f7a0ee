"""The conformance suite every blob source of the chain passes."""
