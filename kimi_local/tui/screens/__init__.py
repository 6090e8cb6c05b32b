"""Screens of the chat app: loading, chat, settings, saved conversations."""
