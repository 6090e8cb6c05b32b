"""The chat TUI (`kimi-local chat`): a person at a terminal talks to Kimi-K2 and watches the machine work.

Layers, as in Textual's own examples: `app.py` (the App: opens a backend on a loading thread, then shows the
chat), `screens/` (loading, chat, settings, saved conversations), `widgets/` (prompt box, conversation view,
telemetry panel, expert heat map) and one stylesheet, `app.tcss`. Below the UI, plain modules the tests drive
directly: `backend.py` (the `ChatBackend` interface) with `local_backend.py` (the engine service in this
process) and `remote_backend.py` (a running `kimi-local serve` over HTTP), `opening.py` (building either with
progress), `conversation.py`/`store.py` (saved conversations), `chat_settings.py`, `telemetry.py`,
`reply_meter.py`, `heatmap.py`, `units.py` and `wire.py` (SSE and Prometheus text).
"""
