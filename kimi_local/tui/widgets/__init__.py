"""Widgets of the chat app: prompt box, conversation view, telemetry panel, expert heat map."""
