"""The core: config, state, the error table, accounts, keys, personas. Imports nothing of ours."""
