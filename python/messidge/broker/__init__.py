"""The broker side: messidge.broker.broker (Broker, cmd) and
messidge.broker.bases (ModelMinimal, SessionMinimal, NodeMinimal)."""
