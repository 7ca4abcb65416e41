"""germline's serving floor: the Ray Serve app and its OpenAI-compatible API.

`app` holds the two deployments (an HTTP gateway, a multiplexed model pool), `openai_api` the
wire format (request validation, response bodies), `registry` which models of the lake can be
served. The models themselves run on a serving engine from `germline.engines`, chosen by name.
Imports the floors below it (`core`, `storage`, `lineage`, `engines`), never training or the
pipelines.
"""
