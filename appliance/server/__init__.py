"""The business server: rules (pure), store (SQLite), MQTT adapter and main."""
