"""`kimi-local serve`: the OpenAI and Anthropic HTTP APIs on one port, over the shared engine service.

Three layers, as in vLLM's entrypoints:
* protocol (`openai_protocol`, `anthropic_protocol`): pydantic request / response models only;
* serving (`serving_chat`, `serving_completions`, `serving_messages`): a request -> prompt ids and sampling
  parameters -> engine requests; engine outputs -> JSON or SSE. Shared pieces: `chat_prompt` (messages, tools
  and tool choice -> prompt ids), `generation` (n engine requests merged, client disconnects), the text
  package's `choice_text` (detokenizing with a holdback for stop strings), `reply` (tool-call parsing),
  `anthropic_messages` (Anthropic blocks -> OpenAI-style messages);
* routes (`routes_openai`, `routes_anthropic`, `routes_system`): thin, read their handler from `app.state`.
`app.create_app(state)` builds the app from a `ServerState`; `runner` wires a loaded model into one and runs
uvicorn; `metrics` renders Prometheus text; `auth` checks the API key; `trusted_hosts` refuses other Host names.
"""
