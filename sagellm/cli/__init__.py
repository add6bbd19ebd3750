"""Command-line interface (`sage`): argument handling only, logic lives in the modules it calls."""
