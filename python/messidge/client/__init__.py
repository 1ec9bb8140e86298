"""The client (and node) side: messidge.client.connection (Connection, cmd)."""
