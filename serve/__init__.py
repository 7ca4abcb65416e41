"""germline's serving floor: the Ray Serve deployment and its OpenAI-compatible API.

`deployment` is the Serve deployment (one replica that answers HTTP itself), `listener` the
listening socket the starting process holds and hands to it, `app` the HTTP app, `pool` the
models a replica holds and how a request runs on them, `openai_api` the wire format (request
validation, response bodies), `registry` which models of the lake can be served. The models
themselves run on a serving engine from `germline.engines`, chosen by name.
Imports the floors below it (`core`, `storage`, `lineage`, `engines`), never training or the
pipelines.
"""
