"""The connection to Azure AI Voice Live: credential, session, reconnect policy, device tools.

``auth`` builds the process's one credential; ``session`` holds the Voice Live connection
(through the ``azure-ai-voicelive`` SDK) and turns every way it can end into one explicit
event; ``backoff`` decides how long to wait before the next attempt; ``history`` remembers the
conversation so a new connection can pick it up; ``tools`` are the functions the model may call.
"""
